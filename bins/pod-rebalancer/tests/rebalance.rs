//! One run end to end: a real Prometheus loaded with 50 pods' series
//! (planted outliers, missing series, NaN) and the fake Kubernetes API
//! server. Expected decisions worked out by hand in `support`.

mod support;

use std::time::Duration;

use keel_testkit::FaultConfig;
use keel_testkit::fakes::kube::Replacement;
use pod_rebalancer::record::{RECORD_ANNOTATION, Record, State};
use pod_rebalancer::{exit, run_once};
use serde_json::json;
use support::*;

#[tokio::test]
async fn composite_evicts_the_hot_and_the_idle_pod() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    let env = env(&kube, prometheus.url(), &[], "run-a").await;
    let report = run_once(&env.settings, &env.clients).await;

    assert_eq!(report.exit_code, exit::OK, "{}", report.explanation);
    assert!(report.acted);
    assert_eq!(names(&report.chosen), [HOT, IDLE]);
    assert_eq!(kube.evictions(), [HOT, IDLE]);
    assert_eq!(report.evicted, [HOT, IDLE]);
    // Skipped and reported, never scored as 0 (they would be the idlest).
    assert_eq!(why(&report, NO_LAG), Some("lag missing"));
    assert_eq!(why(&report, NAN_MEMORY), Some("memory is NaN"));
    assert_eq!(
        why(&report, NO_SERIES),
        Some("cpu missing, lag missing, memory missing")
    );
    // 47 scored pods: 45 at 0.5, 2.0, 0.05 cores. CV is scale-free, so
    // rate()'s extrapolation does not change it: mean 0.52234, population
    // stddev 0.22734, CV 0.4352 > 0.3.
    let cpu = report.stats["cpu"];
    assert_eq!(cpu.count, 47);
    assert!((cpu.cv - 0.4352).abs() < 0.001, "cv {}", cpu.cv);
    let hot = report.pods.iter().find(|p| p.name == HOT).expect("hot pod");
    assert_eq!(hot.score, Some(1.0));
    // The consumption rate, per pod, from the real Prometheus: reported and
    // in the reasons, not scored (a pod without it is still scored).
    let rate = |name: &str| {
        report
            .pods
            .iter()
            .find(|p| p.name == name)
            .expect("pod")
            .consumption_rate
    };
    let close = |v: Option<f64>, want: f64| v.is_some_and(|v| (v - want).abs() < want * 0.02);
    assert!(close(rate(HOT), 120.0), "{:?}", rate(HOT));
    assert!(close(rate(IDLE), 20.0), "{:?}", rate(IDLE));
    assert!(
        close(rate("consumer-00"), 200.0),
        "{:?}",
        rate("consumer-00")
    );
    assert_eq!(rate(NO_RATE), None);
    let no_rate = report.pods.iter().find(|p| p.name == NO_RATE).expect("pod");
    assert!(no_rate.score.is_some());
    assert_eq!(
        report.stats["consumption_rate"].count, 46,
        "47 scored, one without a rate"
    );
    assert!(
        report.chosen[0].reason.contains("records/s"),
        "{}",
        report.chosen[0].reason
    );
    // One event per evicted pod.
    let events = kube.events();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["involvedObject"]["name"], HOT);
    assert_eq!(events[0]["reason"], "Rebalanced");
    // The record: done, what was rotated, the spread before.
    let record = record(&kube).expect("record");
    assert_eq!(record.state, State::Done);
    assert_eq!(record.pods, [HOT, IDLE]);
    assert!((record.spread_before.expect("spread") - 0.4352).abs() < 0.001);
}

#[tokio::test]
async fn hpa_cpu_rotates_top_and_bottom() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    let env = env(&kube, prometheus.url(), &["--strategy", "hpa-cpu"], "run-a").await;
    let report = run_once(&env.settings, &env.clients).await;
    // Threshold 60 % x 1.5 x 1 core = 0.9: only the hot pod is above;
    // 2.0 -> mean(2.0, 0.05) = 1.025: 48.75 % > 10 %.
    assert_eq!(report.exit_code, exit::OK, "{}", report.explanation);
    assert_eq!(names(&report.chosen), [HOT, IDLE]);
    assert!(
        report.explanation.contains("48.7%") || report.explanation.contains("48.8%"),
        "{}",
        report.explanation
    );
    // CPU alone is needed: the pod without lag is scored here.
    assert!(why(&report, NO_LAG).is_none());
    assert_eq!(why(&report, NO_SERIES), Some("cpu missing"));
    assert_eq!(kube.evictions(), [HOT, IDLE]);
}

#[tokio::test]
async fn dry_run_explains_and_changes_nothing() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    let env = env(&kube, prometheus.url(), &["--dry-run"], "run-a").await;
    let report = run_once(&env.settings, &env.clients).await;
    assert_eq!(report.exit_code, exit::OK);
    assert!(!report.acted && report.dry_run);
    assert_eq!(names(&report.chosen), [HOT, IDLE]);
    assert!(report.explanation.ends_with("(dry run: nothing changed)"));
    assert!(kube.evictions().is_empty() && kube.events().is_empty());
    assert!(record(&kube).is_none());
}

#[tokio::test]
async fn a_pdb_429_is_not_now_and_not_retried() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    kube.set_pdb_disruptions_allowed(Some(0));
    let env = env(&kube, prometheus.url(), &[], "run-a").await;
    let report = run_once(&env.settings, &env.clients).await;
    assert_eq!(report.exit_code, exit::REFUSED, "{}", report.explanation);
    assert!(!report.acted);
    assert!(
        why(&report, HOT)
            .expect("refused")
            .contains("PodDisruptionBudget")
    );
    // One attempt at the hot pod, none at the idle one.
    assert_eq!(kube.refused_evictions(), [HOT]);
    assert!(kube.evictions().is_empty());
}

#[tokio::test]
async fn a_pdb_allowing_one_lets_one_go() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    kube.set_pdb_disruptions_allowed(Some(1));
    let env = env(&kube, prometheus.url(), &[], "run-a").await;
    let report = run_once(&env.settings, &env.clients).await;
    assert_eq!(report.exit_code, exit::REFUSED);
    assert!(report.acted);
    assert_eq!(kube.evictions(), [HOT]);
    assert_eq!(kube.refused_evictions(), [IDLE]);
}

#[tokio::test]
async fn never_below_min_ready_pods() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    // 50 Ready; keeping 49 lets one go, keeping 50 none.
    let env49 = env(
        &kube,
        prometheus.url(),
        &["--min-pods-required", "49", "--dry-run"],
        "a",
    )
    .await;
    let report = run_once(&env49.settings, &env49.clients).await;
    assert_eq!(report.exit_code, exit::REFUSED);
    assert_eq!(names(&report.chosen), [HOT]);
    assert!(
        why(&report, IDLE)
            .expect("refused")
            .starts_with("would leave 48 Ready pods")
    );

    let env50 = env(&kube, prometheus.url(), &["--min-pods-required", "50"], "b").await;
    let report = run_once(&env50.settings, &env50.clients).await;
    assert_eq!(report.exit_code, exit::REFUSED);
    assert!(report.chosen.is_empty() && !report.acted);
    assert!(kube.evictions().is_empty());
}

#[tokio::test]
async fn max_pods_to_delete_caps_without_refusing_the_run() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    let env = env(&kube, prometheus.url(), &["--max-pods-to-delete", "1"], "a").await;
    let report = run_once(&env.settings, &env.clients).await;
    assert_eq!(report.exit_code, exit::OK);
    assert_eq!(kube.evictions(), [HOT]);
    assert_eq!(why(&report, IDLE), Some("MAX_PODS_TO_DELETE=1 reached"));
}

#[tokio::test]
async fn a_rollout_or_an_hpa_change_skips_the_run() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    kube.update_deployment(|d| d["status"]["updatedReplicas"] = json!(20));
    let env = env(&kube, prometheus.url(), &[], "a").await;
    let report = run_once(&env.settings, &env.clients).await;
    assert_eq!(report.exit_code, exit::REFUSED);
    assert!(
        report.explanation.contains("rolling out: 20/50"),
        "{}",
        report.explanation
    );

    kube.update_deployment(|d| d["status"]["updatedReplicas"] = json!(50));
    kube.set_hpa(DEPLOYMENT, 60, 50, 55);
    let report = run_once(&env.settings, &env.clients).await;
    assert_eq!(report.exit_code, exit::REFUSED);
    assert_eq!(report.explanation, "HPA scaling: 50 -> 55 replicas");
    assert!(kube.evictions().is_empty());
}

#[tokio::test]
async fn pacing_stops_when_the_replacement_never_becomes_ready() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    kube.set_replacement(Replacement::NeverReady);
    let env = env(&kube, prometheus.url(), &["--pacing", "1s"], "a").await;
    let report = run_once(&env.settings, &env.clients).await;
    assert_eq!(report.exit_code, exit::PACING, "{}", report.explanation);
    // The second pod is not touched while the first is not replaced.
    assert_eq!(kube.evictions(), [HOT]);
    assert!(report.explanation.contains("PACING=1s"));
    // The record is written even so (what went, and the lock released).
    let record = record(&kube).expect("record");
    assert_eq!(
        (record.state, record.pods),
        (State::Done, vec![HOT.to_owned()])
    );
}

#[tokio::test]
async fn pacing_waits_for_a_slow_replacement() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    kube.set_replacement(Replacement::ReadyAfter(Duration::from_millis(300)));
    let env = env(&kube, prometheus.url(), &[], "a").await;
    let started = tokio::time::Instant::now();
    let report = run_once(&env.settings, &env.clients).await;
    assert_eq!(report.exit_code, exit::OK, "{}", report.explanation);
    assert_eq!(kube.evictions(), [HOT, IDLE]);
    // Each replacement is Ready 300 ms after its eviction: the watch sees
    // it (PACING is 5 s).
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // No polling: one list to score, then per eviction one list and one
    // watch from its resourceVersion.
    assert_eq!(kube.pod_lists(), 3);
    assert_eq!(kube.pod_watches(), 2);
    let watch = kube
        .server()
        .requests()
        .into_iter()
        .find(|r| r.query.as_deref().is_some_and(|q| q.contains("watch=true")))
        .expect("a watch");
    let query = watch.query.unwrap_or_default();
    assert!(query.contains("labelSelector=app%3Dconsumer"), "{query}");
    assert!(query.contains("resourceVersion="), "{query}");
}

#[tokio::test]
async fn cooldown_then_outcome_verification() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    let env = env(&kube, prometheus.url(), &["--cooldown", "30m"], "a").await;
    assert_eq!(
        run_once(&env.settings, &env.clients).await.evicted,
        [HOT, IDLE]
    );

    // At once: cooldown, nothing done, not a refusal.
    let report = run_once(&env.settings, &env.clients).await;
    assert_eq!(report.exit_code, exit::OK);
    assert!(
        report.explanation.starts_with("cooldown"),
        "{}",
        report.explanation
    );
    assert!(report.previous.is_some(), "verified on the first run after");
    assert_eq!(kube.evictions().len(), 2);
    // The replacements have no series yet and the outliers are gone: the
    // spread went from 0.435 to 0 (45 pods at 0.5 cores).
    let previous = report.previous.expect("verification");
    assert!(previous.improved && previous.spread_after < 1e-9);
    assert_eq!(previous.pods, [HOT, IDLE]);
    // Verified once: the record says so.
    let record = record(&kube).expect("record");
    assert!(record.verified);
    assert_eq!(record.failures.get("composite"), Some(&0));
}

#[tokio::test]
async fn a_strategy_that_did_not_help_is_backed_off() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    // The last action, 45 minutes ago, left CPU's CV at 0.1; now 0.435.
    let record = Record {
        state: State::Done,
        holder: "earlier".into(),
        at: chrono::Utc::now() - chrono::Duration::minutes(45),
        strategy: "composite".into(),
        pods: vec!["consumer-gone".into()],
        spread_before: Some(0.1),
        verified: false,
        failures: Default::default(),
    };
    kube.update_deployment(|d| {
        d["metadata"]["annotations"][RECORD_ANNOTATION] = json!(record.to_text());
    });
    let env = env(&kube, prometheus.url(), &["--cooldown", "30m"], "a").await;
    let report = run_once(&env.settings, &env.clients).await;
    let previous = report.previous.expect("verified");
    assert!(!previous.improved);
    // 45 min > 30 min, but the doubled cooldown (60 min) still runs.
    assert!(
        report.explanation.contains("cooldown 3600s"),
        "{}",
        report.explanation
    );
    assert!(kube.evictions().is_empty());
    let stored = support::record(&kube).expect("record");
    assert_eq!(stored.failures.get("composite"), Some(&1));
}

#[tokio::test]
async fn two_runs_at_once_only_one_acts() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    let a = env(&kube, prometheus.url(), &[], "run-a").await;
    let b = env(&kube, prometheus.url(), &[], "run-b").await;
    let (ra, rb) = tokio::join!(
        run_once(&a.settings, &a.clients),
        run_once(&b.settings, &b.clients)
    );
    let acted: Vec<_> = [&ra, &rb]
        .iter()
        .filter(|r| r.acted)
        .map(|r| r.exit_code)
        .collect();
    assert_eq!(
        acted,
        [exit::OK],
        "a: {} / b: {}",
        ra.explanation,
        rb.explanation
    );
    let other = if ra.acted { &rb } else { &ra };
    // Refused by the lock (the usual interleaving), or, had it read the
    // Deployment only after the first run finished, held by the cooldown.
    let refused = other.exit_code == exit::REFUSED && other.explanation.starts_with("another run");
    let cooling = other.exit_code == exit::OK && other.explanation.starts_with("cooldown");
    assert!(
        refused || cooling,
        "{} {}",
        other.exit_code,
        other.explanation
    );
    assert_eq!(kube.evictions(), [HOT, IDLE]);
}

fn seed_record(kube: &keel_testkit::fakes::kube::FakeKube, state: State, minutes_ago: i64) {
    let record = Record {
        state,
        holder: "other-run".into(),
        at: chrono::Utc::now() - chrono::Duration::minutes(minutes_ago),
        strategy: "composite".into(),
        pods: Vec::new(),
        spread_before: Some(0.4),
        verified: false,
        failures: Default::default(),
    };
    kube.update_deployment(|d| {
        d["metadata"]["annotations"][RECORD_ANNOTATION] = json!(record.to_text());
    });
}

#[tokio::test]
async fn a_held_lock_refuses_and_a_stale_one_is_taken() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    seed_record(&kube, State::Acting, 1);
    let env = env(&kube, prometheus.url(), &[], "me").await;
    let report = run_once(&env.settings, &env.clients).await;
    assert_eq!(report.exit_code, exit::REFUSED);
    assert!(
        report
            .explanation
            .starts_with("another run (other-run) is acting"),
        "{}",
        report.explanation
    );
    assert!(kube.evictions().is_empty());

    // Its run died 20 minutes ago (lock TTL 15 min): taken.
    seed_record(&kube, State::Acting, 20);
    let report = run_once(&env.settings, &env.clients).await;
    assert_eq!(report.exit_code, exit::OK, "{}", report.explanation);
    assert_eq!(kube.evictions(), [HOT, IDLE]);
}

#[tokio::test]
async fn a_lock_taken_between_read_and_write_is_seen() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    // Another run writes its lock after this run read the Deployment and
    // before its conditional write: 409, re-read, the holder is seen.
    let other = Record {
        state: State::Acting,
        holder: "other-run".into(),
        at: chrono::Utc::now(),
        strategy: "composite".into(),
        pods: Vec::new(),
        spread_before: Some(0.4),
        verified: false,
        failures: Default::default(),
    };
    kube.write_before_next_patch(
        json!({"metadata": {"annotations": {RECORD_ANNOTATION: other.to_text()}}}),
    );
    let env = env(&kube, prometheus.url(), &[], "me").await;
    let report = run_once(&env.settings, &env.clients).await;
    assert_eq!(report.exit_code, exit::REFUSED, "{}", report.explanation);
    assert!(
        report
            .explanation
            .starts_with("another run took the lock first"),
        "{}",
        report.explanation
    );
    assert_eq!(kube.conflicts(), 1);
    assert!(kube.evictions().is_empty());
}

#[tokio::test]
async fn an_unrelated_change_between_read_and_write_is_retried_once() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    // A status update by the Deployment controller bumps resourceVersion.
    kube.write_before_next_patch(json!({"status": {"readyReplicas": 50}}));
    let env = env(&kube, prometheus.url(), &[], "me").await;
    let report = run_once(&env.settings, &env.clients).await;
    assert_eq!(report.exit_code, exit::OK, "{}", report.explanation);
    assert_eq!(kube.conflicts(), 1);
    assert_eq!(kube.evictions(), [HOT, IDLE]);
}

#[tokio::test]
async fn delete_mode_uses_the_grace_period() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    kube.set_pdb_disruptions_allowed(Some(0));
    let env = env(
        &kube,
        prometheus.url(),
        &["--delete-mode", "delete", "--delete-grace-period", "45s"],
        "a",
    )
    .await;
    let report = run_once(&env.settings, &env.clients).await;
    // A plain delete does not consult the PDB.
    assert_eq!(report.exit_code, exit::OK, "{}", report.explanation);
    assert_eq!(
        kube.deletions(),
        [(HOT.to_owned(), Some(45)), (IDLE.to_owned(), Some(45))]
    );
    assert!(kube.evictions().is_empty());
}

#[tokio::test]
async fn prometheus_down_exits_3() {
    let kube = kube().await;
    let env = env(&kube, "http://127.0.0.1:9", &[], "a").await;
    let report = run_once(&env.settings, &env.clients).await;
    assert_eq!(report.exit_code, exit::PROMETHEUS);
    assert!(report.explanation.starts_with("Prometheus unavailable"));
    assert!(kube.evictions().is_empty());
}

#[tokio::test]
async fn api_server_500s_exit_4() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    kube.server()
        .faults()
        .set(FaultConfig::none().with_errors(1.0, http::StatusCode::INTERNAL_SERVER_ERROR))
        .expect("faults");
    let env = env(&kube, prometheus.url(), &[], "a").await;
    let report = run_once(&env.settings, &env.clients).await;
    assert_eq!(report.exit_code, exit::KUBERNETES);
    assert!(
        report.explanation.contains("Kubernetes API unavailable"),
        "{}",
        report.explanation
    );
    // Retried (three attempts), then given up.
    assert_eq!(kube.server().request_count(), 3);
}
