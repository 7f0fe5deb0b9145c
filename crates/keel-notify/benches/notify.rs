//! keel-notify against the hand-written minimum, in one criterion run.
//!
//! * `notify/deliver_1000/*`: 1,000 critical notifications through three
//!   workers to a sink that does nothing, until all are delivered, on a
//!   current-thread tokio runtime (CPU cost per delivery). `notifier` is keel-notify (admission, priority
//!   queue, rate-limit and pause checks, retry wrapper, metrics counters);
//!   `mpsc_3_workers` is the minimum a hand-written notifier needs: an
//!   unbounded tokio channel drained by three tasks.
//! * `notify/dedup_hit/*`: one `notify` of a warning whose key is inside its
//!   dedup window (the hot path while an alert flaps), against a hand-written
//!   `Mutex<HashMap<key, expiry>>` check. Both build the same notification.
//! * `notify/render_telegram/*`: a typical alert (title, 200-character
//!   body, three fields) rendered for Telegram (escaping, UTF-16 length
//!   check), against a bare `format!` with no escaping or counting.
//!
//! Run: `cargo bench -p keel-notify --bench notify`.
#![allow(missing_docs, clippy::disallowed_types)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use keel_notify::{Message, Notification, Notifier, Priority, Sink, SinkError, TelegramSink};
use tokio::sync::{Mutex, Notify, mpsc};

const BATCH: usize = 1_000;

#[derive(Clone, Default)]
struct Counting {
    done: Arc<AtomicUsize>,
    wake: Arc<Notify>,
}

impl Sink for Counting {
    fn name(&self) -> &str {
        "counting"
    }

    async fn send(&self, message: &Message) -> Result<(), SinkError> {
        black_box(message);
        self.done.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
        Ok(())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    // One thread: the figure is the CPU cost per delivery, not how the
    // scheduler spreads tasks on a loaded two-core machine.
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

fn alert(i: usize) -> Notification {
    Notification::critical(format!("vm-{i}:STOPPED"), "VM stopped").field("vm", "vm-1")
}

fn deliver(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("notify/deliver_1000");
    group.throughput(criterion::Throughput::Elements(BATCH as u64));

    let sink = Counting::default();
    let notifier = rt.block_on(async {
        Notifier::builder()
            .sink(sink.clone())
            .capacity(BATCH * 2)
            .workers(3)
            .build()
            .expect("notifier")
    });
    group.bench_function("notifier", |b| {
        b.to_async(&rt).iter(|| async {
            for i in 0..BATCH {
                notifier.notify(alert(i)).expect("queued");
            }
            assert!(notifier.flush(Duration::from_secs(60)).await);
        });
    });

    // The hand-written minimum: a channel and three draining tasks.
    let sink = Counting::default();
    let (tx, rx) = mpsc::unbounded_channel::<Notification>();
    let rx = Arc::new(Mutex::new(rx));
    rt.block_on(async {
        for _ in 0..3 {
            let rx = rx.clone();
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut id = 0;
                loop {
                    let Some(n) = rx.lock().await.recv().await else {
                        return;
                    };
                    id += 1;
                    let _ = sink.send(&Message::new(id, n, 1)).await;
                }
            });
        }
    });
    group.bench_function("mpsc_3_workers", |b| {
        b.to_async(&rt).iter(|| async {
            let target = sink.done.load(Ordering::Relaxed) + BATCH;
            for i in 0..BATCH {
                tx.send(alert(i)).expect("open");
            }
            while sink.done.load(Ordering::Relaxed) < target {
                let notified = sink.wake.notified();
                if sink.done.load(Ordering::Relaxed) >= target {
                    break;
                }
                notified.await;
            }
        });
    });
    group.finish();
    rt.block_on(async { notifier.shutdown(Duration::from_secs(1)).await });
}

fn dedup(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("notify/dedup_hit");
    let notifier = rt.block_on(async {
        let n = Notifier::builder()
            .sink(Counting::default())
            .debounce(Priority::Warning, Duration::ZERO)
            .build()
            .expect("notifier");
        n.notify(Notification::warning("vm-1:STARTING", "stuck"))
            .expect("queued");
        n
    });
    group.bench_function("notifier", |b| {
        b.iter(|| {
            let n = Notification::warning("vm-1:STARTING", "stuck");
            black_box(notifier.notify(n).expect("open"))
        });
    });
    let recent: parking_lot::Mutex<HashMap<String, Instant>> = parking_lot::Mutex::new(
        [(
            "vm-1:STARTING".to_owned(),
            Instant::now() + Duration::from_secs(300),
        )]
        .into(),
    );
    group.bench_function("hashmap", |b| {
        b.iter(|| {
            let n = Notification::warning("vm-1:STARTING", "stuck");
            let now = Instant::now();
            let map = recent.lock();
            black_box(map.get(n.key()).is_some_and(|&until| until > now))
        });
    });
    group.finish();
}

fn render(c: &mut Criterion) {
    let mut group = c.benchmark_group("notify/render_telegram");
    let sink = TelegramSink::builder("1:bench", -100_i64)
        .build()
        .expect("sink");
    let message = Message::new(
        1,
        Notification::critical("vm-7:STOPPED", "VM vm-7 <prod> stopped")
            .body(
                "vm-7 went from RUNNING to STOPPED at 12:00:05 UTC; start requested & pending. "
                    .repeat(3),
            )
            .field("vm", "vm-7")
            .field("zone", "ru-central1-a")
            .field("folder", "b1g-example"),
        2,
    );
    group.bench_function("escape_and_fit", |b| {
        b.iter(|| black_box(sink.render(black_box(&message))));
    });
    group.bench_function("format_only", |b| {
        b.iter(|| {
            let m = black_box(&message);
            let mut out = format!("<b>{}</b>\n{}\n", m.display_title(), m.body());
            for (k, v) in m.fields() {
                out.push_str(&format!("\n<b>{k}:</b> {v}"));
            }
            black_box(vec![out])
        });
    });
    group.finish();
}

criterion_group!(benches, deliver, dedup, render);
criterion_main!(benches);
