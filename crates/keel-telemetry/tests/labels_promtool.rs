//! Hostile label values through the real parser: the exposition of a
//! [`LabelFamily`] and of [`LabelValue`] labels fed with quotes,
//! backslashes, newlines, NUL and a 1 MB string must pass
//! `promtool check metrics` (Debian's `prometheus` package ships promtool;
//! CI installs it). Without promtool the test says so and passes.

use std::io::Write;
use std::process::{Command, Stdio};

use keel_telemetry::prometheus_client::encoding::EncodeLabelSet;
use keel_telemetry::prometheus_client::metrics::counter::Counter;
use keel_telemetry::prometheus_client::metrics::family::Family;
use keel_telemetry::prometheus_client::metrics::gauge::Gauge;
use keel_telemetry::prometheus_client::metrics::histogram::Histogram;
use keel_telemetry::{LabelFamily, LabelValue, MAX_LABEL_VALUE_LEN, MetricsRegistry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmLabels {
    vm: LabelValue,
}

fn hostile_values() -> Vec<String> {
    vec![
        r#"Disk "root" full"#.to_owned(),
        r"C:\temp\ends with backslash\".to_owned(),
        "two\nlines".to_owned(),
        "injected\"} 1\nfake_metric_total 999\n# EOF\n".to_owned(),
        "nul\0inside".to_owned(),
        "\\\"\n\\n".to_owned(),
        "ünïcödé ✓".to_owned(),
        "x".repeat(1 << 20),
        format!("{}\"", "é".repeat(MAX_LABEL_VALUE_LEN)),
    ]
}

fn exposition() -> String {
    let metrics = MetricsRegistry::new("promtool_test").unwrap();
    let events = LabelFamily::<Counter, 2>::builder(["alertname", "status"])
        .max_sets(5)
        .keep(["status"])
        .build()
        .unwrap();
    let depth = LabelFamily::<Gauge, 1>::builder(["queue"]).build().unwrap();
    fn buckets() -> Histogram {
        Histogram::new([0.01, 0.1, 1.0])
    }
    let latency = LabelFamily::<Histogram, 1>::builder_with_constructor(
        ["route"],
        buckets as fn() -> Histogram,
    )
    .build()
    .unwrap();
    let vms = Family::<VmLabels, Gauge>::default();
    metrics.register_with(|r| {
        r.register("events", "Events by alert name", events.clone());
        r.register("queue_depth", "Queue depth", depth.clone());
        r.register("latency_seconds", "Latency", latency.clone());
        r.register("vm_up", "VM up", vms.clone());
    });
    for value in hostile_values() {
        // Past five sets these fold into `other`.
        events.get_or_create([&value, "firing"]).inc();
        depth.get_or_create([&value]).set(3);
        latency.get_or_create([&value]).observe(0.05);
        vms.get_or_create(&VmLabels {
            vm: LabelValue::from(value.as_str()),
        })
        .set(1);
    }
    metrics.encode().unwrap()
}

#[test]
fn hostile_label_values_pass_promtool() {
    let text = exposition();
    // The 1 MB value was capped.
    assert!(text.len() < 64 * 1024, "{} bytes", text.len());
    // No sample was injected: every line is a comment or a sample of ours.
    for line in text.lines() {
        assert!(
            line.starts_with('#') || line.starts_with("promtool_test_"),
            "foreign line {line:?}"
        );
    }
    assert!(
        text.contains(r#"alertname="Disk \"root\" full",status="firing"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"alertname="other",status="firing"} 4"#),
        "{text}"
    );

    let promtool = match Command::new("promtool").arg("--version").output() {
        Ok(out) if out.status.success() => "promtool",
        _ => {
            eprintln!(
                "SKIPPED: promtool is not installed (apt-get install prometheus); \
                 the exposition was only checked by this test's own assertions"
            );
            return;
        }
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool parses the Prometheus 0.0.4 text format: exit 1 is a parse
    // error (what an unescaped quote or newline causes). Exit 3 is lint
    // findings; the only one tolerated is "no help text" for counter
    // samples, because OpenMetrics puts HELP on the family name
    // (`x`) and the sample is `x_total`.
    assert!(
        !report.contains("error while linting"),
        "promtool could not parse the exposition: {report}\n{text}"
    );
    match out.status.code() {
        Some(0) => {}
        Some(3) => {
            for finding in report.lines().filter(|l| !l.trim().is_empty()) {
                assert!(
                    finding.ends_with("_total no help text"),
                    "unexpected promtool finding {finding:?}"
                );
            }
        }
        other => panic!("promtool exited with {other:?}: {report}"),
    }
}
