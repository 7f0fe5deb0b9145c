//! Properties of the decision over arbitrary pods: a pod with a missing or
//! NaN metric, an ineligible or an unscored pod is never chosen; the
//! composite choice is the highest and the lowest score among the eligible
//! pods; scaling every metric by a constant changes neither the CVs nor the
//! choice; `limit` never leaves fewer Ready pods than asked.

use pod_rebalancer::config::{DecisionSettings, Strategy as Choice};
use pod_rebalancer::decide::{HpaTarget, PodInput, decide, limit};
use proptest::prelude::*;

fn metric() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        8 => (0.0f64..10.0).prop_map(Some),
        1 => Just(None),
        1 => Just(Some(f64::NAN)),
    ]
}

/// CPU, lag, memory, and a kind (0: not Ready, 1: opted out, else eligible).
type RawPod = (Option<f64>, Option<f64>, Option<f64>, u8);

fn pod() -> impl Strategy<Value = RawPod> {
    (metric(), metric(), metric(), 0u8..10)
}

fn build(raw: &[RawPod]) -> Vec<PodInput> {
    raw.iter()
        .enumerate()
        .map(|(i, &(cpu, lag, memory, kind))| PodInput {
            name: format!("p{i:03}"),
            ready: kind != 0,
            ineligible: match kind {
                0 => Some("not Ready".into()),
                1 => Some("opted out".into()),
                _ => None,
            },
            unscored: kind == 0,
            cpu,
            lag,
            memory,
            consumption_rate: cpu.map(|c| c * 100.0),
            cpu_request: Some(1.0),
        })
        .collect()
}

fn complete(p: &PodInput, all: bool) -> bool {
    let ok = |v: Option<f64>| v.is_some_and(f64::is_finite);
    ok(p.cpu) && (!all || (ok(p.lag) && ok(p.memory)))
}

proptest! {
    #[test]
    fn only_eligible_complete_pods_are_chosen(raw in prop::collection::vec(pod(), 0..40)) {
        let pods = build(&raw);
        let hpa = Some(HpaTarget { cpu_utilization_percent: 50.0 });
        for strategy in [Choice::Composite, Choice::HpaCpu] {
            let d = decide(strategy, &DecisionSettings::default(), &pods, hpa);
            for c in &d.chosen {
                let p = pods.iter().find(|p| p.name == c.name).expect("chosen pod exists");
                prop_assert!(p.ineligible.is_none() && !p.unscored);
                prop_assert!(complete(p, strategy == Choice::Composite), "{:?}", p);
            }
            let mut names: Vec<_> = d.chosen.iter().map(|c| &c.name).collect();
            names.dedup();
            prop_assert_eq!(names.len(), d.chosen.len(), "no pod chosen twice");
        }
    }

    #[test]
    fn composite_takes_the_extremes_and_is_scale_free(
        raw in prop::collection::vec(pod(), 2..40),
        scale in 0.01f64..100.0,
    ) {
        let pods = build(&raw);
        let settings = DecisionSettings::default();
        let d = decide(Choice::Composite, &settings, &pods, None);
        if d.chosen.len() == 2 {
            let score = |name: &str| d.pods.iter().find(|p| p.name == name).and_then(|p| p.score).expect("scored");
            let eligible: Vec<f64> = pods.iter()
                .filter(|p| p.ineligible.is_none() && !p.unscored && complete(p, true))
                .map(|p| score(&p.name))
                .collect();
            let max = eligible.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let min = eligible.iter().copied().fold(f64::INFINITY, f64::min);
            prop_assert_eq!(score(&d.chosen[0].name), max);
            prop_assert_eq!(score(&d.chosen[1].name), min);
        }
        let scaled: Vec<PodInput> = pods.iter().map(|p| PodInput {
            cpu: p.cpu.map(|v| v * scale),
            lag: p.lag.map(|v| v * scale),
            memory: p.memory.map(|v| v * scale),
            ..p.clone()
        }).collect();
        let s = decide(Choice::Composite, &settings, &scaled, None);
        for (metric, stats) in &d.stats {
            prop_assert!((stats.cv - s.stats[metric].cv).abs() < 1e-9);
        }
        // The same pods unless two scores tie within rounding.
        let names = |x: &pod_rebalancer::decide::Decision| x.chosen.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        if d.chosen.len() == 2 && s.chosen.len() == 2 && names(&d) != names(&s) {
            let gap = |x: &pod_rebalancer::decide::Decision| {
                let mut scores: Vec<f64> = x.pods.iter().filter_map(|p| p.score).collect();
                scores.sort_by(f64::total_cmp);
                scores.windows(2).map(|w| w[1] - w[0]).fold(f64::INFINITY, f64::min)
            };
            prop_assert!(gap(&d) < 1e-9, "choice changed with the scale");
        } else {
            prop_assert_eq!(d.chosen.len(), s.chosen.len());
        }
    }

    #[test]
    fn limit_keeps_min_ready(raw in prop::collection::vec(pod(), 0..40), max in 1usize..5, min_ready in 1usize..40) {
        let pods = build(&raw);
        let d = decide(Choice::Composite, &DecisionSettings::default(), &pods, None);
        let (kept, refused) = limit(&d.chosen, &pods, max, min_ready);
        let ready = pods.iter().filter(|p| p.ready).count();
        prop_assert!(kept.len() <= max);
        prop_assert!(kept.is_empty() || ready - kept.len() >= min_ready);
        prop_assert_eq!(kept.len() + refused.len(), d.chosen.len());
    }
}
