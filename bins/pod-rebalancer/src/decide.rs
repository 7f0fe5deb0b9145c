//! The decision, pure: pods with their metrics in, the pods to rotate and
//! why out. No I/O, so every rule is tested here with numbers worked out by
//! hand.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{DecisionSettings, Strategy};
use crate::stats::{Stats, mean};

/// One pod as the API server and Prometheus describe it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodInput {
    /// Pod name.
    pub name: String,
    /// Ready condition true.
    pub ready: bool,
    /// Why the pod may not be chosen (terminating, too young, opted out,
    /// not Ready), if it may not.
    pub ineligible: Option<String>,
    /// Whether it is left out of scoring too (terminating, too young, not
    /// Ready: its metrics do not describe a steady member of the group).
    pub unscored: bool,
    /// CPU cores.
    pub cpu: Option<f64>,
    /// Kafka lag.
    pub lag: Option<f64>,
    /// Memory bytes.
    pub memory: Option<f64>,
    /// Kafka records consumed per second. Not part of the score (the plan's
    /// score is CPU, lag and memory): it breaks ties between equal scores
    /// and explains the choice.
    pub consumption_rate: Option<f64>,
    /// Sum of the containers' CPU requests, cores.
    pub cpu_request: Option<f64>,
}

/// A pod in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PodReport {
    /// Name.
    pub name: String,
    /// CPU cores (null when missing).
    pub cpu: Option<f64>,
    /// Lag (null when missing).
    pub lag: Option<f64>,
    /// Memory bytes (null when missing).
    pub memory: Option<f64>,
    /// Records consumed per second (null when missing).
    pub consumption_rate: Option<f64>,
    /// Score (null when not scored).
    pub score: Option<f64>,
    /// Ready.
    pub ready: bool,
}

/// A chosen pod.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chosen {
    /// Name.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// A pod left out, or a refusal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refused {
    /// Pod name (or `*` for the whole run).
    pub name: String,
    /// Why.
    pub why: String,
}

/// What the strategy decided.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// Every pod, with its score where it has one.
    pub pods: Vec<PodReport>,
    /// Pods to rotate, busiest first.
    pub chosen: Vec<Chosen>,
    /// Pods skipped (missing metrics, not eligible).
    pub skipped: Vec<Refused>,
    /// Statistics per metric.
    pub stats: BTreeMap<String, Stats>,
    /// The spread the outcome verification compares: CV of CPU.
    pub spread: Option<f64>,
    /// One sentence: why act or why not.
    pub explanation: String,
}

/// What the hpa-cpu strategy needs from the HPA.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HpaTarget {
    /// `averageUtilization` of the CPU resource metric, percent.
    pub cpu_utilization_percent: f64,
}

fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite())
}

fn missing(pod: &PodInput, needs_all: bool) -> Option<String> {
    let mut missing = Vec::new();
    let mut check = |name: &str, v: Option<f64>| match v {
        None => missing.push(format!("{name} missing")),
        Some(x) if !x.is_finite() => missing.push(format!("{name} is NaN")),
        Some(_) => {}
    };
    check("cpu", pod.cpu);
    if needs_all {
        check("lag", pod.lag);
        check("memory", pod.memory);
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

fn normalise(values: &[f64]) -> Vec<f64> {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let range = max - min;
    values
        .iter()
        .map(|v| if range > 0.0 { (v - min) / range } else { 0.0 })
        .collect()
}

/// Runs `strategy` over `pods`.
pub fn decide(
    strategy: Strategy,
    settings: &DecisionSettings,
    pods: &[PodInput],
    hpa: Option<HpaTarget>,
) -> Decision {
    let needs_all = strategy == Strategy::Composite;
    let mut decision = Decision::default();
    // Indices of pods that are scored.
    let mut scored: Vec<usize> = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        if pod.unscored {
            decision.skipped.push(Refused {
                name: pod.name.clone(),
                why: pod
                    .ineligible
                    .clone()
                    .unwrap_or_else(|| "not scored".into()),
            });
        } else if let Some(why) = missing(pod, needs_all) {
            decision.skipped.push(Refused {
                name: pod.name.clone(),
                why,
            });
        } else {
            scored.push(i);
        }
    }
    let column = |f: fn(&PodInput) -> Option<f64>| -> Vec<f64> {
        scored.iter().filter_map(|&i| finite(f(&pods[i]))).collect()
    };
    let cpu = column(|p| p.cpu);
    for (name, values) in [
        ("cpu", cpu.clone()),
        ("lag", column(|p| p.lag)),
        ("memory", column(|p| p.memory)),
        ("consumption_rate", column(|p| p.consumption_rate)),
    ] {
        if let Some(s) = Stats::of(&values) {
            decision.stats.insert(name.to_owned(), s);
        }
    }
    decision.spread = decision.stats.get("cpu").map(|s| s.cv);
    let mut scores = vec![None; pods.len()];
    match strategy {
        Strategy::Composite => composite(settings, pods, &scored, &mut scores, &mut decision),
        Strategy::HpaCpu => hpa_cpu(settings, pods, &scored, &mut scores, hpa, &mut decision),
    }
    decision.pods = pods
        .iter()
        .zip(&scores)
        .map(|(p, score)| PodReport {
            name: p.name.clone(),
            cpu: p.cpu,
            lag: p.lag,
            memory: p.memory,
            consumption_rate: p.consumption_rate,
            score: *score,
            ready: p.ready,
        })
        .collect();
    decision
}

fn composite(
    settings: &DecisionSettings,
    pods: &[PodInput],
    scored: &[usize],
    scores: &mut [Option<f64>],
    decision: &mut Decision,
) {
    if scored.len() < 2 {
        decision.explanation = format!("{} pod(s) with metrics: nothing to compare", scored.len());
        return;
    }
    let get = |f: fn(&PodInput) -> Option<f64>| -> Vec<f64> {
        scored.iter().map(|&i| f(&pods[i]).unwrap_or(0.0)).collect()
    };
    let (wc, wl, wm) = settings.weights;
    let total = wc + wl + wm;
    let (nc, nl, nm) = (
        normalise(&get(|p| p.cpu)),
        normalise(&get(|p| p.lag)),
        normalise(&get(|p| p.memory)),
    );
    for (k, &i) in scored.iter().enumerate() {
        scores[i] = Some((wc * nc[k] + wl * nl[k] + wm * nm[k]) / total);
    }
    let cpu_cv = decision.stats.get("cpu").map_or(0.0, |s| s.cv);
    let lag_cv = decision.stats.get("lag").map_or(0.0, |s| s.cv);
    let spread_out = cpu_cv > settings.cpu_cv_threshold || lag_cv > settings.lag_cv_threshold;
    if !spread_out {
        decision.explanation = format!(
            "balanced: CPU CV {cpu_cv:.3} <= {} and lag CV {lag_cv:.3} <= {}",
            settings.cpu_cv_threshold, settings.lag_cv_threshold
        );
        return;
    }
    // Candidates: scored and eligible, ordered by score; on equal scores
    // the pod consuming more records is the busier (a missing rate counts
    // as none), then the first name.
    let mut candidates: Vec<usize> = scored
        .iter()
        .copied()
        .filter(|&i| pods[i].ineligible.is_none())
        .collect();
    let rate = |i: usize| finite(pods[i].consumption_rate).unwrap_or(f64::NEG_INFINITY);
    candidates.sort_by(|&a, &b| {
        scores[b]
            .unwrap_or(0.0)
            .total_cmp(&scores[a].unwrap_or(0.0))
            .then_with(|| rate(b).total_cmp(&rate(a)))
            .then_with(|| pods[a].name.cmp(&pods[b].name))
    });
    for &i in scored {
        if let Some(why) = &pods[i].ineligible {
            decision.skipped.push(Refused {
                name: pods[i].name.clone(),
                why: why.clone(),
            });
        }
    }
    if candidates.len() < 2 {
        decision.explanation = format!(
            "spread out (CPU CV {cpu_cv:.3}, lag CV {lag_cv:.3}) but fewer than 2 eligible pods"
        );
        return;
    }
    let s = |i: usize| scores[i].unwrap_or(0.0);
    // Ties: the consumption rate (higher is busier), then the first name,
    // at both ends.
    let busiest = candidates[0];
    let idlest = candidates
        .iter()
        .copied()
        .filter(|&i| i != busiest)
        .min_by(|&a, &b| {
            s(a).total_cmp(&s(b))
                .then_with(|| rate(a).total_cmp(&rate(b)))
                .then_with(|| pods[a].name.cmp(&pods[b].name))
        })
        .unwrap_or(busiest);
    let consuming = |i: usize| match finite(pods[i].consumption_rate) {
        Some(r) => format!(", consuming {r:.1} records/s"),
        None => String::new(),
    };
    decision.chosen.push(Chosen {
        name: pods[busiest].name.clone(),
        reason: format!("most busy: score {:.3}{}", s(busiest), consuming(busiest)),
    });
    decision.chosen.push(Chosen {
        name: pods[idlest].name.clone(),
        reason: format!("least busy: score {:.3}{}", s(idlest), consuming(idlest)),
    });
    decision.explanation = format!(
        "spread out: CPU CV {cpu_cv:.3} (threshold {}), lag CV {lag_cv:.3} (threshold {}); rotate the most and the least busy pod",
        settings.cpu_cv_threshold, settings.lag_cv_threshold
    );
}

fn hpa_cpu(
    settings: &DecisionSettings,
    pods: &[PodInput],
    scored: &[usize],
    scores: &mut [Option<f64>],
    hpa: Option<HpaTarget>,
    decision: &mut Decision,
) {
    for &i in scored {
        scores[i] = pods[i].cpu;
    }
    let Some(hpa) = hpa else {
        decision.explanation = "no HPA CPU utilisation target: hpa-cpu cannot decide".into();
        return;
    };
    let requests: Vec<f64> = scored
        .iter()
        .filter_map(|&i| finite(pods[i].cpu_request))
        .collect();
    if requests.is_empty() {
        decision.explanation = "no pod declares a CPU request: hpa-cpu cannot decide".into();
        return;
    }
    let threshold = hpa.cpu_utilization_percent / 100.0 * settings.tolerance * mean(&requests);
    let mut candidates: Vec<usize> = scored
        .iter()
        .copied()
        .filter(|&i| pods[i].ineligible.is_none())
        .collect();
    let cpu = |i: usize| pods[i].cpu.unwrap_or(0.0);
    candidates.sort_by(|&a, &b| {
        cpu(b)
            .total_cmp(&cpu(a))
            .then_with(|| pods[a].name.cmp(&pods[b].name))
    });
    let top: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|&i| cpu(i) > threshold)
        .take(settings.top_k)
        .collect();
    if top.is_empty() {
        decision.explanation = format!(
            "no pod above {threshold:.3} cores (target {}% x tolerance {} x mean request {:.3})",
            hpa.cpu_utilization_percent,
            settings.tolerance,
            mean(&requests)
        );
        return;
    }
    let bottom: Vec<usize> = candidates
        .iter()
        .rev()
        .copied()
        .filter(|i| !top.contains(i))
        .take(settings.top_k)
        .collect();
    let top_mean = mean(&top.iter().map(|&i| cpu(i)).collect::<Vec<_>>());
    let all: Vec<f64> = top.iter().chain(&bottom).map(|&i| cpu(i)).collect();
    let after = mean(&all);
    let improvement = if top_mean > 0.0 {
        (top_mean - after) / top_mean * 100.0
    } else {
        0.0
    };
    if improvement <= settings.min_improvement_percent {
        decision.explanation = format!(
            "predicted improvement {improvement:.1}% (top mean {top_mean:.3} -> {after:.3}) <= {}%",
            settings.min_improvement_percent
        );
        return;
    }
    // Pairs (busiest with idlest, second with second), so that a cap of
    // MAX_PODS_TO_DELETE keeps whole pairs rather than only busy pods.
    for k in 0..top.len().max(bottom.len()) {
        if let Some(&i) = top.get(k) {
            decision.chosen.push(Chosen {
                name: pods[i].name.clone(),
                reason: format!("top CPU {:.3} > {threshold:.3}", cpu(i)),
            });
        }
        if let Some(&i) = bottom.get(k) {
            decision.chosen.push(Chosen {
                name: pods[i].name.clone(),
                reason: format!("bottom CPU {:.3}", cpu(i)),
            });
        }
    }
    decision.explanation = format!(
        "predicted improvement {improvement:.1}% (top mean {top_mean:.3} -> {after:.3}) > {}%",
        settings.min_improvement_percent
    );
}

/// Applies the run's limits to a decision: at most `max` pods, and never
/// fewer than `min_ready` Ready pods counting the chosen ones. Returns the
/// pods that stay chosen and the refusals.
pub fn limit(
    chosen: &[Chosen],
    pods: &[PodInput],
    max: usize,
    min_ready: usize,
) -> (Vec<Chosen>, Vec<Refused>) {
    let ready = pods
        .iter()
        .filter(|p| p.ready && !p.is_terminating())
        .count();
    let mut kept = Vec::new();
    let mut refused = Vec::new();
    for c in chosen {
        if kept.len() >= max {
            refused.push(Refused {
                name: c.name.clone(),
                why: format!("MAX_PODS_TO_DELETE={max} reached"),
            });
            continue;
        }
        let is_ready = pods.iter().any(|p| p.name == c.name && p.ready);
        let left = ready.saturating_sub(kept.len() + usize::from(is_ready));
        if left < min_ready {
            refused.push(Refused {
                name: c.name.clone(),
                why: format!(
                    "would leave {left} Ready pods, MIN_PODS_REQUIRED={min_ready} ({ready} Ready now)"
                ),
            });
            continue;
        }
        kept.push(c.clone());
    }
    (kept, refused)
}

impl PodInput {
    fn is_terminating(&self) -> bool {
        self.ineligible.as_deref() == Some("terminating")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, cpu: f64, lag: f64, memory: f64) -> PodInput {
        PodInput {
            name: name.into(),
            ready: true,
            cpu: Some(cpu),
            lag: Some(lag),
            memory: Some(memory),
            cpu_request: Some(1.0),
            ..PodInput::default()
        }
    }

    fn names(chosen: &[Chosen]) -> Vec<&str> {
        chosen.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn composite_rotates_the_most_and_least_busy() {
        // CPU 1, 2, 3, 6: mean 3, variance (4+1+0+9)/4 = 3.5, CV 0.624 > 0.3.
        let pods = vec![
            pod("a", 1.0, 10.0, 100.0),
            pod("b", 2.0, 20.0, 100.0),
            pod("c", 3.0, 30.0, 100.0),
            pod("d", 6.0, 60.0, 200.0),
        ];
        let d = decide(
            Strategy::Composite,
            &DecisionSettings::default(),
            &pods,
            None,
        );
        assert_eq!(names(&d.chosen), ["d", "a"]);
        let cpu = d.stats["cpu"];
        assert!((cpu.cv - 3.5f64.sqrt() / 3.0).abs() < 1e-12);
        // d: cpu 1, lag 1, memory 1 => 1.0; a: 0. b: cpu 0.2, lag 0.2, mem 0 => 0.16.
        assert_eq!(d.pods[3].score, Some(1.0));
        assert_eq!(d.pods[0].score, Some(0.0));
        assert!((d.pods[1].score.expect("scored") - 0.16).abs() < 1e-12);
    }

    #[test]
    fn consumption_rate_breaks_ties_and_is_reported_not_scored() {
        // b and c tie at the top (score 0.8: memory is equal), x and y at
        // the bottom (0): the
        // higher consumption rate is the busier one; a missing rate counts
        // as none; NaN is missing.
        let with_rate = |name, cpu, rate: Option<f64>| PodInput {
            consumption_rate: rate,
            ..pod(name, cpu, cpu * 10.0, 100.0)
        };
        let pods = vec![
            with_rate("b", 6.0, Some(100.0)),
            with_rate("c", 6.0, Some(250.0)),
            with_rate("m", 3.0, Some(1e6)),
            with_rate("x", 1.0, Some(f64::NAN)),
            with_rate("y", 1.0, Some(5.0)),
        ];
        let d = decide(
            Strategy::Composite,
            &DecisionSettings::default(),
            &pods,
            None,
        );
        assert_eq!(names(&d.chosen), ["c", "x"]);
        assert_eq!(
            d.chosen[0].reason,
            "most busy: score 0.800, consuming 250.0 records/s"
        );
        assert_eq!(d.chosen[1].reason, "least busy: score 0.000");
        // The huge rate of m changes neither its score nor the choice.
        assert!((d.pods[2].score.expect("scored") - 0.32).abs() < 1e-12);
        assert_eq!(d.pods[1].consumption_rate, Some(250.0));
        let rate = d.stats["consumption_rate"];
        assert_eq!(rate.count, 4, "NaN left out of the statistics");
        // Same rates but swapped: the choice follows the rate, not the name.
        let pods = vec![
            with_rate("b", 6.0, Some(300.0)),
            with_rate("c", 6.0, None),
            with_rate("x", 1.0, Some(5.0)),
            with_rate("y", 1.0, Some(1.0)),
        ];
        let d = decide(
            Strategy::Composite,
            &DecisionSettings::default(),
            &pods,
            None,
        );
        assert_eq!(names(&d.chosen), ["b", "y"]);
    }

    #[test]
    fn composite_balanced_does_nothing() {
        let pods = vec![
            pod("a", 1.0, 10.0, 1.0),
            pod("b", 1.1, 10.5, 1.0),
            pod("c", 0.9, 9.5, 1.0),
        ];
        let d = decide(
            Strategy::Composite,
            &DecisionSettings::default(),
            &pods,
            None,
        );
        assert!(d.chosen.is_empty());
        assert!(d.explanation.starts_with("balanced"), "{}", d.explanation);
    }

    #[test]
    fn lag_alone_can_trigger() {
        // CPU equal (CV 0); lag 0, 0, 30: mean 10, stddev 14.1, CV 1.41 > 0.5.
        let pods = vec![
            pod("a", 1.0, 0.0, 1.0),
            pod("b", 1.0, 0.0, 1.0),
            pod("c", 1.0, 30.0, 1.0),
        ];
        let d = decide(
            Strategy::Composite,
            &DecisionSettings::default(),
            &pods,
            None,
        );
        assert_eq!(names(&d.chosen), ["c", "a"]);
    }

    #[test]
    fn missing_and_nan_metrics_are_skipped_not_zero() {
        let mut nan = pod("nan", 0.0, 0.0, 0.0);
        nan.cpu = Some(f64::NAN);
        let mut gone = pod("gone", 0.0, 0.0, 0.0);
        gone.lag = None;
        let pods = vec![pod("a", 1.0, 1.0, 1.0), pod("b", 5.0, 5.0, 5.0), nan, gone];
        let d = decide(
            Strategy::Composite,
            &DecisionSettings::default(),
            &pods,
            None,
        );
        // Had they counted as 0 they would be the least busy.
        assert_eq!(names(&d.chosen), ["b", "a"]);
        assert_eq!(d.stats["cpu"].count, 2);
        let skipped: Vec<_> = d
            .skipped
            .iter()
            .map(|r| (r.name.as_str(), r.why.as_str()))
            .collect();
        assert!(skipped.contains(&("nan", "cpu is NaN")));
        assert!(skipped.contains(&("gone", "lag missing")));
        assert_eq!(d.pods[2].score, None);
    }

    #[test]
    fn ineligible_pods_are_scored_but_not_chosen() {
        let mut hot = pod("hot", 9.0, 9.0, 9.0);
        hot.ineligible = Some("opted out".into());
        let pods = vec![
            hot,
            pod("a", 1.0, 1.0, 1.0),
            pod("b", 2.0, 2.0, 2.0),
            pod("c", 5.0, 5.0, 5.0),
        ];
        let d = decide(
            Strategy::Composite,
            &DecisionSettings::default(),
            &pods,
            None,
        );
        assert_eq!(names(&d.chosen), ["c", "a"]);
        assert!(d.pods[0].score.is_some());
    }

    #[test]
    fn hpa_cpu_top_and_bottom() {
        // Request 1 core, target 60%, tolerance 1.5 => threshold 0.9 cores.
        let pods = vec![
            pod("a", 0.2, 0.0, 0.0),
            pod("b", 0.5, 0.0, 0.0),
            pod("c", 0.6, 0.0, 0.0),
            pod("d", 1.4, 0.0, 0.0),
        ];
        let hpa = Some(HpaTarget {
            cpu_utilization_percent: 60.0,
        });
        let d = decide(Strategy::HpaCpu, &DecisionSettings::default(), &pods, hpa);
        // Top mean 1.4 -> mean(1.4, 0.2) = 0.8: 42.9% > 10%.
        assert_eq!(names(&d.chosen), ["d", "a"]);
        assert!(d.explanation.contains("42.9%"), "{}", d.explanation);
    }

    #[test]
    fn hpa_cpu_pairs_top_and_bottom_for_the_cap() {
        // Threshold 0.9: e (1.6) and d (1.2) are top; a (0.1), b (0.2) bottom.
        // Top mean 1.4 -> mean(1.6, 1.2, 0.1, 0.2) = 0.775: 44.6 %.
        let pods = vec![
            pod("a", 0.1, 0.0, 0.0),
            pod("b", 0.2, 0.0, 0.0),
            pod("c", 0.5, 0.0, 0.0),
            pod("d", 1.2, 0.0, 0.0),
            pod("e", 1.6, 0.0, 0.0),
        ];
        let settings = DecisionSettings {
            top_k: 2,
            ..DecisionSettings::default()
        };
        let hpa = Some(HpaTarget {
            cpu_utilization_percent: 60.0,
        });
        let d = decide(Strategy::HpaCpu, &settings, &pods, hpa);
        assert_eq!(names(&d.chosen), ["e", "a", "d", "b"]);
        assert!(d.explanation.contains("44.6%"), "{}", d.explanation);
        let (kept, _) = limit(&d.chosen, &pods, 2, 1);
        assert_eq!(names(&kept), ["e", "a"]);
    }

    #[test]
    fn hpa_cpu_small_improvement_does_nothing() {
        // Threshold 0.9; top 1.0, bottom 0.95: 1.0 -> 0.975 = 2.5%.
        let pods = vec![pod("a", 0.95, 0.0, 0.0), pod("b", 1.0, 0.0, 0.0)];
        let hpa = Some(HpaTarget {
            cpu_utilization_percent: 60.0,
        });
        let d = decide(Strategy::HpaCpu, &DecisionSettings::default(), &pods, hpa);
        assert!(d.chosen.is_empty());
        assert!(d.explanation.contains("2.5%"), "{}", d.explanation);
    }

    #[test]
    fn hpa_cpu_nobody_above_threshold() {
        let pods = vec![pod("a", 0.1, 0.0, 0.0), pod("b", 0.8, 0.0, 0.0)];
        let hpa = Some(HpaTarget {
            cpu_utilization_percent: 60.0,
        });
        let d = decide(Strategy::HpaCpu, &DecisionSettings::default(), &pods, hpa);
        assert!(d.chosen.is_empty());
        assert!(
            d.explanation.starts_with("no pod above 0.900"),
            "{}",
            d.explanation
        );
    }

    #[test]
    fn limits_max_and_min_ready() {
        let pods: Vec<_> = (0..4)
            .map(|i| pod(&format!("p{i}"), 1.0, 1.0, 1.0))
            .collect();
        let chosen: Vec<Chosen> = ["p0", "p1", "p2"]
            .iter()
            .map(|n| Chosen {
                name: (*n).into(),
                reason: String::new(),
            })
            .collect();
        let (kept, refused) = limit(&chosen, &pods, 2, 1);
        assert_eq!(names(&kept), ["p0", "p1"]);
        assert_eq!(refused[0].why, "MAX_PODS_TO_DELETE=2 reached");
        // 4 Ready, keep 3: only one may go.
        let (kept, refused) = limit(&chosen, &pods, 3, 3);
        assert_eq!(names(&kept), ["p0"]);
        assert_eq!(refused.len(), 2);
        assert!(
            refused[0].why.starts_with("would leave 2 Ready pods"),
            "{}",
            refused[0].why
        );
    }
}
