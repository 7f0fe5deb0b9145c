//! Saga behaviour: compensation order, retries, idempotency keys, parallel
//! compensation, failed compensations, resume after a crash.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel_core::Outcome;
use keel_retry::{Backoff, Jitter, RetryPolicy};
use keel_tx::{
    MemoryJournal, Record, ResumeMode, Saga, SagaEvent, SagaExecutor, SagaRegistry, SagaStatus,
    Step, StepState, TxError, idempotency_key,
};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// The fake cloud: records every call in order.
#[derive(Clone, Default)]
struct Cloud {
    calls: Arc<Mutex<Vec<String>>>,
}

impl Cloud {
    fn log(&self, call: impl Into<String>) {
        self.calls.lock().push(call.into());
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().clone()
    }
}

fn no_retry() -> RetryPolicy {
    RetryPolicy::builder().max_retries(0).build().unwrap()
}

fn fast_retry(retries: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .max_retries(retries)
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

/// A step that succeeds (returning `{"id": "<name>-1"}`) and whose
/// compensation succeeds, both logged.
fn ok_step(cloud: &Cloud, name: &'static str) -> Step {
    let (a, c) = (cloud.clone(), cloud.clone());
    Step::new(name, move |ctx| {
        let cloud = a.clone();
        async move {
            cloud.log(format!("do {}", ctx.step()));
            Ok::<_, &str>(json!({"id": format!("{}-1", ctx.step())}))
        }
    })
    .compensate(move |ctx| {
        let cloud = c.clone();
        async move {
            let id = ctx
                .output()
                .and_then(|o| o["id"].as_str())
                .unwrap_or("unknown")
                .to_owned();
            cloud.log(format!("undo {} {id}", ctx.step()));
            Ok::<_, &str>(())
        }
    })
    .retry(no_retry())
}

fn failing_step(cloud: &Cloud, name: &'static str) -> Step {
    let a = cloud.clone();
    Step::new(name, move |ctx| {
        let cloud = a.clone();
        async move {
            cloud.log(format!("do {}", ctx.step()));
            Err::<Value, _>("quota exceeded")
        }
    })
    .retry(no_retry())
}

async fn executor(journal: Arc<MemoryJournal>, registry: SagaRegistry) -> SagaExecutor {
    SagaExecutor::builder(journal, registry)
        .open()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_failed_step_compensates_completed_steps_in_reverse_order() {
    let cloud = Cloud::default();
    let registry = SagaRegistry::new()
        .register(ok_step(&cloud, "create_vpc"))
        .register(ok_step(&cloud, "create_instances"))
        .register(failing_step(&cloud, "register_dns"));
    let journal = Arc::new(MemoryJournal::recording());
    let exec = executor(journal.clone(), registry).await;
    let report = exec
        .run(
            Saga::new("s1")
                .step("create_vpc")
                .step("create_instances")
                .step("register_dns"),
        )
        .await
        .unwrap();

    assert_eq!(report.status(), Some(SagaStatus::Compensated));
    assert_eq!(
        cloud.calls(),
        [
            "do create_vpc",
            "do create_instances",
            "do register_dns",
            "undo create_instances create_instances-1",
            "undo create_vpc create_vpc-1",
        ]
    );
    assert_eq!(
        report.compensated_steps(),
        ["create_instances", "create_vpc"]
    );
    let states: Vec<StepState> = report.steps.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        [
            StepState::Compensated,
            StepState::Compensated,
            StepState::Failed
        ]
    );
    assert_eq!(report.steps[2].error.as_deref(), Some("quota exceeded"));

    // Every transition is in the journal, in order.
    let kinds: Vec<String> = journal
        .records()
        .iter()
        .map(|r| match r {
            Record::Saga { event, .. } => serde_json::to_value(event).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned(),
            other => panic!("unexpected record {other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "started",
            "step_started",
            "step_completed",
            "step_started",
            "step_completed",
            "step_started",
            "step_failed",
            "aborted",
            "compensation_started",
            "compensated",
            "compensation_started",
            "compensated",
            "finished",
        ]
    );
}

#[tokio::test]
async fn a_successful_saga_completes_and_passes_outputs_forward() {
    let cloud = Cloud::default();
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let registry = SagaRegistry::new()
        .register(ok_step(&cloud, "create_vpc"))
        .register(
            Step::new("create_subnet", move |ctx| {
                let seen = seen2.clone();
                async move {
                    *seen.lock() = ctx.output_of("create_vpc").cloned();
                    assert_eq!(ctx.input(), &json!({"cidr": "10.0.0.0/16"}));
                    Ok::<_, &str>("subnet-1")
                }
            })
            .retry(no_retry()),
        );
    let exec = executor(Arc::new(MemoryJournal::new()), registry).await;
    let report = exec
        .run(
            Saga::new("s2")
                .input(json!({"cidr": "10.0.0.0/16"}))
                .step("create_vpc")
                .step("create_subnet"),
        )
        .await
        .unwrap();
    assert!(report.is_completed());
    assert_eq!(*seen.lock(), Some(json!({"id": "create_vpc-1"})));
    assert_eq!(report.output("create_subnet"), Some(&json!("subnet-1")));
    assert!(report.compensated_steps().is_empty());
}

#[tokio::test(start_paused = true)]
async fn steps_retry_under_their_policy_with_a_stable_idempotency_key() {
    let keys = Arc::new(Mutex::new(Vec::new()));
    let keys2 = keys.clone();
    let registry = SagaRegistry::new().register(
        Step::new("flaky", move |ctx| {
            let keys = keys2.clone();
            async move {
                keys.lock()
                    .push((ctx.attempt(), ctx.idempotency_key().to_owned()));
                if ctx.attempt() < 3 {
                    Err("throttled")
                } else {
                    Ok(json!("done"))
                }
            }
        })
        .retry(fast_retry(5)),
    );
    let exec = executor(Arc::new(MemoryJournal::new()), registry).await;
    let started = tokio::time::Instant::now();
    let report = exec.run(Saga::new("s3").step("flaky")).await.unwrap();
    assert!(report.is_completed());
    assert_eq!(report.steps[0].attempts, 3);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(200),
        "two constant 100 ms backoffs"
    );
    let expected = idempotency_key("s3", "flaky");
    assert_eq!(report.steps[0].idempotency_key, expected);
    assert_eq!(
        *keys.lock(),
        [(1, expected.clone()), (2, expected.clone()), (3, expected)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_step_gives_up_after_its_retries_and_non_retryable_errors_stop_at_once() {
    let calls = Arc::new(AtomicU32::new(0));
    let (c1, c2) = (calls.clone(), calls.clone());
    let registry = SagaRegistry::new()
        .register(
            Step::new("always_down", move |_| {
                c1.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>("503") }
            })
            .retry(fast_retry(2)),
        )
        .register(
            Step::new("bad_request", move |_| {
                c2.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>("400 invalid instance type") }
            })
            .retry(fast_retry(5))
            .classify(|e| {
                if e.to_string().starts_with("400") {
                    Outcome::Neutral
                } else {
                    Outcome::Failure
                }
            }),
        );
    let exec = executor(Arc::new(MemoryJournal::new()), registry).await;
    let report = exec
        .run(Saga::new("down").step("always_down"))
        .await
        .unwrap();
    assert_eq!(report.status(), Some(SagaStatus::Compensated));
    assert_eq!(report.steps[0].attempts, 3);
    assert_eq!(calls.swap(0, Ordering::SeqCst), 3);

    let report = exec
        .run(Saga::new("bad").step("bad_request"))
        .await
        .unwrap();
    assert_eq!(report.steps[0].attempts, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        report.steps[0].error.as_deref(),
        Some("400 invalid instance type")
    );
}

#[tokio::test]
async fn parallel_compensation_runs_compensations_at_once() {
    // Each compensation waits for all three to have started: run one by
    // one they would never finish.
    let barrier = Arc::new(tokio::sync::Barrier::new(3));
    let mut registry = SagaRegistry::new();
    for name in ["a", "b", "c"] {
        let barrier = barrier.clone();
        registry = registry.register(
            Step::new(name, |_| async { Ok::<_, &str>(()) })
                .compensate(move |_| {
                    let barrier = barrier.clone();
                    async move {
                        barrier.wait().await;
                        Ok::<_, &str>(())
                    }
                })
                .retry(no_retry()),
        );
    }
    let cloud = Cloud::default();
    registry = registry.register(failing_step(&cloud, "fail"));
    let exec = executor(Arc::new(MemoryJournal::new()), registry).await;
    let saga = Saga::new("p")
        .step("a")
        .step("b")
        .step("c")
        .step("fail")
        .parallel_compensation(true);
    let report = tokio::time::timeout(Duration::from_secs(10), exec.run(saga))
        .await
        .expect("parallel compensations do not wait for each other")
        .unwrap();
    assert_eq!(report.status(), Some(SagaStatus::Compensated));
    assert_eq!(report.compensated_steps().len(), 3);
}

fn registry_with_broken_compensation(cloud: &Cloud) -> SagaRegistry {
    let c = cloud.clone();
    SagaRegistry::new()
        .register(ok_step(cloud, "first"))
        .register(ok_step(cloud, "second").compensate(move |_| {
            let cloud = c.clone();
            async move {
                cloud.log("undo second failed");
                Err::<(), _>("instance is protected")
            }
        }))
        .register(failing_step(cloud, "third"))
}

#[tokio::test]
async fn continuing_past_a_failed_compensation_reports_it() {
    let cloud = Cloud::default();
    let exec = executor(
        Arc::new(MemoryJournal::new()),
        registry_with_broken_compensation(&cloud),
    )
    .await;
    let saga = Saga::new("k")
        .step("first")
        .step("second")
        .step("third")
        .continue_on_compensation_failure(true);
    let report = exec.run(saga).await.unwrap();
    assert_eq!(report.status(), Some(SagaStatus::CompensationFailed));
    assert_eq!(report.steps[1].state, StepState::CompensationFailed);
    assert_eq!(
        report.steps[1].compensation_error.as_deref(),
        Some("instance is protected")
    );
    assert_eq!(report.steps[0].state, StepState::Compensated);
    assert_eq!(
        cloud.calls(),
        [
            "do first",
            "do second",
            "do third",
            "undo second failed",
            "undo first first-1"
        ]
    );
}

#[tokio::test]
async fn by_default_compensation_stops_at_the_first_failure() {
    let cloud = Cloud::default();
    let exec = executor(
        Arc::new(MemoryJournal::new()),
        registry_with_broken_compensation(&cloud),
    )
    .await;
    let saga = Saga::new("k").step("first").step("second").step("third");
    let report = exec.run(saga).await.unwrap();
    assert_eq!(report.status(), Some(SagaStatus::CompensationFailed));
    assert_eq!(report.steps[1].state, StepState::CompensationFailed);
    assert_eq!(
        report.steps[0].state,
        StepState::Completed,
        "left for an operator"
    );
    assert!(!cloud.calls().iter().any(|c| c.starts_with("undo first")));
}

/// A registry whose `provision` step blocks until released, signalling
/// when it starts, so a test can "crash" the saga mid-step.
fn crash_registry(cloud: &Cloud, started: Arc<tokio::sync::Notify>, block: bool) -> SagaRegistry {
    let a = cloud.clone();
    let c = cloud.clone();
    SagaRegistry::new()
        .register(ok_step(cloud, "reserve_ip"))
        .register(
            Step::new("provision", move |ctx| {
                let cloud = a.clone();
                let started = started.clone();
                async move {
                    cloud.log(format!("do provision key={}", &ctx.idempotency_key()[..8]));
                    started.notify_one();
                    if block {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, &str>(json!({"id": "vm-7"}))
                }
            })
            .compensate(move |ctx| {
                let cloud = c.clone();
                async move {
                    cloud.log(format!("undo provision output={:?}", ctx.output()));
                    Ok::<_, &str>(())
                }
            })
            .retry(no_retry()),
        )
        .register(ok_step(cloud, "attach_disk"))
}

async fn crash_mid_provision(journal: Arc<MemoryJournal>) -> Cloud {
    let cloud = Cloud::default();
    let started = Arc::new(tokio::sync::Notify::new());
    let exec = executor(journal, crash_registry(&cloud, started.clone(), true)).await;
    let saga = Saga::new("vm-7/create")
        .step("reserve_ip")
        .step("provision")
        .step("attach_disk");
    tokio::select! {
        _ = exec.run(saga) => panic!("the step blocks"),
        () = started.notified() => {}
    }
    // The run future is dropped here: the process "crashed" mid-step.
    assert_eq!(exec.unfinished(), ["vm-7/create"]);
    cloud
}

#[tokio::test]
async fn a_restarted_executor_resumes_forward_with_the_same_key() {
    let journal = Arc::new(MemoryJournal::new());
    let before = crash_mid_provision(journal.clone()).await;
    let key = &idempotency_key("vm-7/create", "provision")[..8];
    assert_eq!(
        before.calls(),
        ["do reserve_ip", format!("do provision key={key}").as_str()]
    );

    let cloud = Cloud::default();
    let exec = executor(
        journal,
        crash_registry(&cloud, Arc::new(tokio::sync::Notify::new()), false),
    )
    .await;
    assert_eq!(
        exec.report("vm-7/create").unwrap().steps[1].state,
        StepState::Running
    );
    let reports = exec.recover().await.unwrap();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].is_completed());
    // reserve_ip is not repeated; provision is repeated with the same key.
    assert_eq!(
        cloud.calls(),
        [format!("do provision key={key}").as_str(), "do attach_disk"]
    );
    assert!(exec.unfinished().is_empty());
}

#[tokio::test]
async fn a_restarted_executor_can_compensate_instead() {
    let journal = Arc::new(MemoryJournal::new());
    crash_mid_provision(journal.clone()).await;

    let cloud = Cloud::default();
    let exec = SagaExecutor::builder(
        journal,
        crash_registry(&cloud, Arc::new(tokio::sync::Notify::new()), false),
    )
    .resume_mode(ResumeMode::Compensate)
    .open()
    .await
    .unwrap();
    let reports = exec.recover().await.unwrap();
    assert_eq!(reports[0].status(), Some(SagaStatus::Compensated));
    // The uncertain step is compensated without an output, then the completed one.
    assert_eq!(
        cloud.calls(),
        ["undo provision output=None", "undo reserve_ip reserve_ip-1"]
    );
}

#[tokio::test]
async fn a_crash_during_compensation_resumes_compensation() {
    let journal = Arc::new(MemoryJournal::new());
    let cloud = Cloud::default();
    let started = Arc::new(tokio::sync::Notify::new());
    let blocking_undo = {
        let started = started.clone();
        let cloud = cloud.clone();
        ok_step(&cloud, "two").compensate(move |_| {
            let started = started.clone();
            let cloud = cloud.clone();
            async move {
                cloud.log("undo two (blocked)");
                started.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, &str>(())
            }
        })
    };
    let registry = SagaRegistry::new()
        .register(ok_step(&cloud, "one"))
        .register(blocking_undo)
        .register(failing_step(&cloud, "three"));
    let exec = executor(journal.clone(), registry).await;
    tokio::select! {
        _ = exec.run(Saga::new("c").step("one").step("two").step("three")) => panic!("blocks"),
        () = started.notified() => {}
    }
    drop(exec);

    let after = Cloud::default();
    let registry = SagaRegistry::new()
        .register(ok_step(&after, "one"))
        .register(ok_step(&after, "two"))
        .register(failing_step(&after, "three"));
    let exec = executor(journal, registry).await;
    let reports = exec.recover().await.unwrap();
    assert_eq!(reports[0].status(), Some(SagaStatus::Compensated));
    assert_eq!(
        after.calls(),
        ["undo two two-1", "undo one one-1"],
        "no step re-run forward"
    );
}

#[tokio::test]
async fn running_a_finished_saga_again_returns_its_report() {
    let cloud = Cloud::default();
    let exec = executor(
        Arc::new(MemoryJournal::new()),
        SagaRegistry::new().register(ok_step(&cloud, "a")),
    )
    .await;
    let first = exec.run(Saga::new("once").step("a")).await.unwrap();
    let second = exec.run(Saga::new("once").step("a")).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(cloud.calls(), ["do a"], "not run twice");
    let err = exec
        .run(Saga::new("once").step("a").step("a2"))
        .await
        .unwrap_err();
    assert!(matches!(err, TxError::UnknownStep(_)), "{err:?}");
}

#[tokio::test]
async fn invalid_sagas_are_refused_before_anything_runs() {
    let cloud = Cloud::default();
    let registry = SagaRegistry::new()
        .register(ok_step(&cloud, "a"))
        .register(ok_step(&cloud, "b"));
    let exec = executor(Arc::new(MemoryJournal::new()), registry).await;
    let err = exec
        .run(Saga::new("x").step("a").step("nope"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TxError::UnknownStep(u) if u.step == "nope"),
        "{err:?}"
    );
    let err = exec
        .run(Saga::new("x").step("a").step("a"))
        .await
        .unwrap_err();
    assert!(matches!(err, TxError::InvalidSaga(_)), "{err:?}");
    let err = exec.run(Saga::new("x")).await.unwrap_err();
    assert!(matches!(err, TxError::InvalidSaga(_)), "{err:?}");
    let err = exec.run(Saga::new("").step("a")).await.unwrap_err();
    assert!(matches!(err, TxError::InvalidSaga(_)), "{err:?}");
    exec.run(Saga::new("y").step("a")).await.unwrap();
    let err = exec.run(Saga::new("y").step("b")).await.unwrap_err();
    assert!(
        matches!(err, TxError::InvalidSaga(_)),
        "different steps under a journaled id: {err:?}"
    );
    assert!(cloud.calls() == ["do a"]);
}

#[tokio::test]
async fn the_same_saga_cannot_run_twice_at_once() {
    let started = Arc::new(tokio::sync::Notify::new());
    let cloud = Cloud::default();
    let exec = executor(
        Arc::new(MemoryJournal::new()),
        crash_registry(&cloud, started.clone(), true),
    )
    .await;
    let saga = Saga::new("dup").step("reserve_ip").step("provision");
    let exec2 = exec.clone();
    let saga2 = saga.clone();
    let first = tokio::spawn(async move { exec2.run(saga2).await });
    started.notified().await;
    let err = exec.run(saga).await.unwrap_err();
    assert!(matches!(err, TxError::SagaInProgress(_)), "{err:?}");
    first.abort();
}

#[tokio::test]
async fn saga_events_survive_a_json_round_trip() {
    let event = SagaEvent::StepCompleted {
        index: 1,
        output: json!({"id": "i-1"}),
        attempts: 2,
    };
    let text = serde_json::to_string(&event).unwrap();
    assert_eq!(
        text,
        r#"{"kind":"step_completed","index":1,"output":{"id":"i-1"},"attempts":2}"#
    );
    assert_eq!(serde_json::from_str::<SagaEvent>(&text).unwrap(), event);
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn metrics_count_steps_and_compensations() {
    let metrics = keel_tx::TxMetrics::new();
    let cloud = Cloud::default();
    let exec = SagaExecutor::builder(
        Arc::new(MemoryJournal::new()),
        registry_with_broken_compensation(&cloud),
    )
    .metrics(metrics.clone())
    .open()
    .await
    .unwrap();
    let saga = Saga::new("m")
        .step("first")
        .step("second")
        .step("third")
        .continue_on_compensation_failure(true);
    exec.run(saga).await.unwrap();
    assert_eq!(metrics.saga_steps(true), 2);
    assert_eq!(metrics.saga_steps(false), 1);
    assert_eq!(metrics.compensations(), 2);
    assert_eq!(metrics.compensation_failures(), 1);
}
