//! Decision time, no I/O: `decide` + `limit` over 1,000 and 10,000 pods for
//! both strategies, against the hand-written minimum any decision needs
//! (the statistics of the CPU column: one pass and a sort).

#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pod_rebalancer::config::{DecisionSettings, Strategy};
use pod_rebalancer::decide::{HpaTarget, PodInput, decide, limit};
use pod_rebalancer::stats::Stats;

fn pods(n: usize) -> Vec<PodInput> {
    // Deterministic spread: a hot and an idle pod, a pod without lag every
    // 97, the rest around 0.5 cores.
    (0..n)
        .map(|i| {
            let wobble = ((i * 7919) % 100) as f64 / 1000.0;
            let cpu = match i {
                7 => 2.0,
                31 => 0.05,
                _ => 0.45 + wobble,
            };
            PodInput {
                name: format!("consumer-{i:05}"),
                ready: true,
                cpu: Some(cpu),
                lag: (i % 97 != 0).then_some(cpu * 2000.0),
                memory: Some(5e8 + wobble * 1e8),
                consumption_rate: Some(200.0 / cpu),
                cpu_request: Some(1.0),
                ..PodInput::default()
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let settings = DecisionSettings::default();
    let hpa = Some(HpaTarget {
        cpu_utilization_percent: 60.0,
    });
    let mut group = c.benchmark_group("decide");
    for n in [1_000usize, 10_000] {
        let input = pods(n);
        group.bench_with_input(BenchmarkId::new("baseline_cpu_stats", n), &input, |b, p| {
            b.iter(|| {
                let cpu: Vec<f64> = p.iter().filter_map(|x| x.cpu).collect();
                Stats::of(&cpu)
            });
        });
        for strategy in [Strategy::Composite, Strategy::HpaCpu] {
            group.bench_with_input(BenchmarkId::new(strategy.as_str(), n), &input, |b, p| {
                b.iter(|| {
                    let d = decide(strategy, &settings, p, hpa);
                    limit(&d.chosen, p, 2, 3)
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
