//! The properties the fuzz target `vms_yaml` checks (`fuzz/`,
//! docs/RELIABILITY.md); not a stable API.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeZone as _, Utc};

use crate::vms_yaml::{self, VmSource, VmSpec, VmsFile, Window};

/// Minutes in a week.
const WEEK: u32 = 7 * 24 * 60;

/// `vms.yaml` as the watchdog reads it (at start and at every reload).
///
/// Properties: parsing is deterministic; an accepted file satisfies every
/// invariant the module documents (at least one VM; names of 1-128
/// `[A-Za-z0-9._-]`, unique; instance ids and folder ids of 1-64
/// `[A-Za-z0-9-]`; one source per VM, no source twice; an http(s) proxy URL
/// with a host and no trailing slash; a port above 0; a non-empty host;
/// intervals of 1 s to 24 h with min ≤ max; stuck thresholds of 1 s to 30
/// days; a positive topic; windows that are not empty and contain their
/// start but not their end), and written back out as YAML it parses to the
/// same value; a rejected file gets a message that starts with the file's
/// path.
pub fn vms_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("vms.yaml");
    let parsed = vms_yaml::parse(text, path);
    assert_eq!(
        format!("{parsed:?}"),
        format!("{:?}", vms_yaml::parse(text, path)),
        "deterministic"
    );
    match parsed {
        Ok(file) => {
            invariants(&file);
            let again = render(&file);
            let back = vms_yaml::parse(&again, path)
                .unwrap_or_else(|e| panic!("the file written back is refused: {e}\n{again}"));
            assert_eq!(back, file, "written back:\n{again}");
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with("vms.yaml: ") && message.len() > "vms.yaml: ".len(),
                "{message}"
            );
        }
    }
}

fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn invariants(file: &VmsFile) {
    assert!(!file.vms.is_empty(), "an empty list was accepted");
    if let Some(folder) = &file.folder_id {
        assert!(valid_id(folder), "folder_id {folder:?}");
    }
    let mut names = HashSet::new();
    let mut sources = HashSet::new();
    for vm in &file.vms {
        assert!(valid_name(&vm.name), "name {:?}", vm.name);
        assert!(names.insert(&vm.name), "name {:?} twice", vm.name);
        assert!(sources.insert(&vm.source), "source {:?} twice", vm.source);
        match &vm.source {
            VmSource::Instance { id } => assert!(valid_id(id), "instance_id {id:?}"),
            VmSource::Proxy { url } => {
                let parsed = reqwest::Url::parse(url).expect("a proxy URL parses");
                assert!(matches!(parsed.scheme(), "http" | "https") && parsed.host_str().is_some());
                assert!(
                    !url.ends_with('/') && url.trim() == url,
                    "proxy_url {url:?}"
                );
            }
        }
        if let Some(host) = &vm.ssh_host {
            assert!(!host.is_empty() && host.trim() == host, "ssh_host {host:?}");
        }
        assert_ne!(vm.ssh_port, 0);
        let day = Duration::from_secs(24 * 3_600);
        for d in [vm.min_check_interval, vm.max_check_interval]
            .into_iter()
            .flatten()
        {
            assert!(d >= Duration::from_secs(1) && d <= day, "interval {d:?}");
        }
        if let (Some(min), Some(max)) = (vm.min_check_interval, vm.max_check_interval) {
            assert!(min <= max);
        }
        for d in [vm.stuck_after, vm.updating_stuck_after]
            .into_iter()
            .flatten()
        {
            assert!(
                d >= Duration::from_secs(1) && d <= crate::duration::MAX,
                "{d:?}"
            );
        }
        assert!(vm.topic_id.is_none_or(|t| t > 0));
        for w in &vm.maintenance {
            window(w);
        }
    }
}

/// A window is not empty, contains its start and not its end, and ends
/// where [`Window::end_after`] says.
fn window(w: &Window) {
    match *w {
        Window::Once { start, end } => {
            assert!(start < end);
            assert!(w.contains(start) && !w.contains(end));
            assert_eq!(w.end_after(start), end);
        }
        Window::Weekly { from, to } => {
            assert!(from < WEEK && to < WEEK && from != to, "{w:?}");
            let length = (to + WEEK - from) % WEEK;
            assert!((1..24 * 60).contains(&length), "{w:?}: {length} minutes");
            // Monday 2026-12-07 00:00 UTC, minute 0 of a week.
            let monday = Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap();
            let start = monday + chrono::Duration::minutes(i64::from(from));
            let end = start + chrono::Duration::minutes(i64::from(length));
            assert!(w.contains(start), "{w:?} does not contain its start");
            assert!(w.contains(end - chrono::Duration::seconds(1)));
            assert!(!w.contains(end), "{w:?} contains its end");
            assert_eq!(w.end_after(start), end);
        }
    }
}

/// A YAML double-quoted scalar: printable ASCII as is, everything else
/// escaped (YAML 1.1 reads some Unicode characters as line breaks).
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08x}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

fn time(t: DateTime<Utc>) -> String {
    quote(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn weekly(from: u32, to: u32) -> String {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let length = (to + WEEK - from) % WEEK;
    let start = from % (24 * 60);
    let end = (start + length) % (24 * 60);
    format!(
        "\"{} {:02}:{:02}-{:02}:{:02}\"",
        DAYS[(from / (24 * 60)) as usize],
        start / 60,
        start % 60,
        end / 60,
        end % 60
    )
}

/// The file as YAML, every field written out.
fn render(file: &VmsFile) -> String {
    let mut out = String::new();
    if let Some(folder) = &file.folder_id {
        let _ = writeln!(out, "folder_id: {}", quote(folder));
    }
    out.push_str("vms:\n");
    for vm in &file.vms {
        render_vm(&mut out, vm);
    }
    out
}

fn render_vm(out: &mut String, vm: &VmSpec) {
    let _ = writeln!(out, "  - name: {}", quote(&vm.name));
    match &vm.source {
        VmSource::Instance { id } => {
            let _ = writeln!(out, "    instance_id: {}", quote(id));
        }
        VmSource::Proxy { url } => {
            let _ = writeln!(out, "    proxy_url: {}", quote(url));
        }
    }
    if let Some(host) = &vm.ssh_host {
        let _ = writeln!(out, "    ssh_host: {}", quote(host));
    }
    let _ = writeln!(out, "    ssh_port: {}", vm.ssh_port);
    let _ = writeln!(out, "    auto_start: {}", vm.auto_start);
    for (field, d) in [
        ("min_check_interval", vm.min_check_interval),
        ("max_check_interval", vm.max_check_interval),
        ("stuck_after", vm.stuck_after),
        ("updating_stuck_after", vm.updating_stuck_after),
    ] {
        if let Some(d) = d {
            let _ = writeln!(out, "    {field}: {}", d.as_secs());
        }
    }
    if let Some(topic) = vm.topic_id {
        let _ = writeln!(out, "    topic_id: {topic}");
    }
    if !vm.maintenance.is_empty() {
        out.push_str("    maintenance:\n");
        for w in &vm.maintenance {
            match *w {
                Window::Once { start, end } => {
                    let _ = writeln!(
                        out,
                        "      - start: {}\n        end: {}",
                        time(start),
                        time(end)
                    );
                }
                Window::Weekly { from, to } => {
                    let _ = writeln!(out, "      - weekly: {}", weekly(from, to));
                }
            }
        }
    }
}
