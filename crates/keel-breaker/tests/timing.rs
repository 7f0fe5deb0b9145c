//! Every timing rule, driven by tokio's paused clock (the breaker's default
//! clock follows it), plus cancellation: a call future dropped mid-flight is
//! neutral.

use std::future::pending;
use std::time::Duration;

use keel_breaker::{
    BreakerConfig, BreakerConfigBuilder, BreakerError, CircuitBreaker, Rejected, State,
};
use tokio::time::{advance, sleep, timeout};

type Io<T> = Result<T, std::io::Error>;

fn consecutive(n: u32) -> BreakerConfigBuilder {
    BreakerConfig::builder()
        .no_failure_rate()
        .consecutive_failures(n)
        .minimum_calls(1)
        .half_open_max_probes(1)
        .half_open_successes(1)
}

async fn fail(b: &CircuitBreaker) {
    let r = b
        .call(async { Err::<(), _>(std::io::Error::other("down")) })
        .await;
    assert!(matches!(r, Err(BreakerError::Inner(_))), "{r:?}");
}

async fn succeed(b: &CircuitBreaker) {
    b.call(async { Ok::<_, std::io::Error>(()) })
        .await
        .expect("admitted and ok");
}

fn retry_after(b: &CircuitBreaker) -> Duration {
    match b.try_acquire() {
        Err(Rejected::CircuitOpen(open)) => {
            open.retry_after.expect("open knows its remaining time")
        }
        other => panic!("expected an open rejection, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn open_duration_elapses_on_the_tokio_clock() {
    let b = CircuitBreaker::new(
        "dep",
        consecutive(1)
            .open_duration(Duration::from_secs(30))
            .build()
            .unwrap(),
    );
    fail(&b).await;
    assert_eq!(retry_after(&b), Duration::from_secs(30));
    advance(Duration::from_millis(29_999)).await;
    assert_eq!(b.state(), State::Open);
    assert_eq!(retry_after(&b), Duration::from_millis(1));
    advance(Duration::from_millis(1)).await;
    assert_eq!(b.state(), State::HalfOpen);
    succeed(&b).await;
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn open_duration_grows_exponentially_up_to_its_cap() {
    let b = CircuitBreaker::new(
        "dep",
        consecutive(1)
            .open_duration(Duration::from_secs(1))
            .open_duration_growth(3.0, Duration::from_secs(20))
            .build()
            .unwrap(),
    );
    fail(&b).await;
    let mut waits = Vec::new();
    for _ in 0..5 {
        let wait = retry_after(&b);
        waits.push(wait);
        advance(wait).await;
        fail(&b).await; // the probe fails: open again, longer
    }
    let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, [1, 3, 9, 20, 20]);
    // A successful probe closes it and the next open starts from the base.
    advance(retry_after(&b)).await;
    succeed(&b).await;
    fail(&b).await;
    assert_eq!(retry_after(&b), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn half_open_max_wait_releases_a_breaker_wedged_by_a_hung_probe() {
    let b = CircuitBreaker::new(
        "dep",
        consecutive(1)
            .open_duration(Duration::from_secs(10))
            .half_open_max_wait(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    fail(&b).await;
    advance(Duration::from_secs(10)).await;
    let hung = tokio::spawn({
        let b = b.clone();
        async move { b.call(pending::<Io<()>>()).await }
    });
    tokio::task::yield_now().await;
    assert_eq!(b.stats().half_open_probes_in_flight, 1);
    assert!(b.try_acquire().is_err(), "the single probe slot is taken");
    advance(Duration::from_secs(5)).await;
    assert_eq!(b.state(), State::Open, "max wait exceeded: open again");
    advance(retry_after(&b)).await;
    succeed(&b).await;
    assert_eq!(b.state(), State::Closed, "a fresh probe closed it");
    hung.abort();
    assert!(hung.await.unwrap_err().is_cancelled());
    assert_eq!(b.state(), State::Closed);
    assert_eq!(
        b.stats().totals.neutral,
        1,
        "the aborted probe counted as neutral"
    );
}

#[tokio::test(start_paused = true)]
async fn time_window_buckets_expire_one_at_a_time() {
    let b = CircuitBreaker::new(
        "dep",
        BreakerConfig::builder()
            .time_window(Duration::from_secs(4), 4)
            .failure_rate_threshold(0.9)
            .minimum_calls(100)
            .build()
            .unwrap(),
    );
    for second in 0..4 {
        for _ in 0..=second {
            fail(&b).await;
        }
        advance(Duration::from_secs(1)).await;
    }
    // Buckets hold 1, 2, 3, 4 failures; the first bucket has just expired.
    assert_eq!(b.stats().window_calls, 2 + 3 + 4);
    advance(Duration::from_secs(1)).await;
    assert_eq!(b.stats().window_calls, 3 + 4);
    advance(Duration::from_millis(1_999)).await;
    assert_eq!(b.stats().window_calls, 4);
    advance(Duration::from_millis(1)).await;
    assert_eq!(b.stats().window_calls, 0);
    assert_eq!(
        b.state(),
        State::Closed,
        "never reached the minimum of 100 calls"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_call_threshold_uses_the_call_duration() {
    let b = CircuitBreaker::new(
        "dep",
        BreakerConfig::builder()
            .no_failure_rate()
            .count_window(10)
            .minimum_calls(4)
            .slow_call(Duration::from_secs(2), 0.5)
            .build()
            .unwrap(),
    );
    for millis in [1_999, 10, 2_000] {
        b.call(async move {
            sleep(Duration::from_millis(millis)).await;
            Io::Ok(())
        })
        .await
        .unwrap();
    }
    let s = b.stats();
    assert_eq!((s.window_calls, s.window_slow_calls), (3, 1));
    assert_eq!(b.state(), State::Closed);
    b.call(async {
        sleep(Duration::from_secs(5)).await;
        Io::Ok(())
    })
    .await
    .unwrap();
    assert_eq!(b.state(), State::Open, "2 of 4 calls at or over 2 s");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_is_neutral_and_never_a_failure() {
    let b = CircuitBreaker::new("dep", consecutive(1).build().unwrap());
    for _ in 0..3 {
        let dropped = timeout(
            Duration::from_secs(1),
            b.call(async {
                sleep(Duration::from_secs(60)).await;
                Err::<(), _>(std::io::Error::other("would have failed"))
            }),
        )
        .await;
        assert!(dropped.is_err(), "the timeout dropped the call mid-flight");
    }
    let s = b.stats();
    assert_eq!(b.state(), State::Closed, "one failure would have opened it");
    assert_eq!((s.totals.neutral, s.totals.failures), (3, 0));
    succeed(&b).await;
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_frees_its_slot_without_reopening() {
    let b = CircuitBreaker::new(
        "dep",
        consecutive(1)
            .open_duration(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    fail(&b).await;
    advance(Duration::from_secs(1)).await;
    let probe = b.call(pending::<Io<()>>());
    let cancelled = timeout(Duration::from_millis(10), probe).await;
    assert!(cancelled.is_err());
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "cancellation is not a failed probe"
    );
    assert_eq!(b.stats().half_open_probes_in_flight, 0);
    succeed(&b).await;
    assert_eq!(b.state(), State::Closed);
}
