//! `vms.yaml`: which VMs to watch and how to reach them.
//!
//! ```yaml
//! folder_id: b1g0123456789abcdef   # optional: one instances.list per poll
//! vms:
//!   - name: web-1
//!     instance_id: fhm0123456789abcdef
//!   - name: worker-2
//!     instance_id: fhm9876543210fedcba
//!     ssh_host: 10.0.0.12            # default: the VM's NAT address
//!     ssh_port: 2222                 # default: 22
//!   - name: legacy
//!     proxy_url: http://proxy.internal:8000/legacy   # GET /info, POST /start
//!   - name: batch-3                  # per-VM overrides, all optional:
//!     instance_id: fhm5555555555555555
//!     auto_start: false              # alert only; never started
//!     min_check_interval: 10s        # MIN_CHECK_INTERVAL for this VM
//!     max_check_interval: 5m         # MAX_CHECK_INTERVAL for this VM
//!     stuck_after: 15m               # STUCK_AFTER (STARTING, PROVISIONING...)
//!     updating_stuck_after: 30m      # UPDATING_STUCK_AFTER
//!     topic_id: 42                   # its alerts go to this forum topic
//!     maintenance:                   # neither started nor alerted within
//!       - start: 2026-12-24T22:00:00Z
//!         end: 2026-12-25T02:00:00Z
//!       - weekly: "Sun 02:00-04:00"  # every week, UTC
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::error::VmsFileError;

/// The default SSH port probed on running VMs.
pub const DEFAULT_SSH_PORT: u16 = 22;

/// The parsed, validated file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmsFile {
    /// The folder whose `instances.list` refreshes every Compute VM's
    /// status in one call per poll.
    pub folder_id: Option<String>,
    /// The VMs, in file order, names unique.
    pub vms: Vec<VmSpec>,
}

/// One VM to watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VmSpec {
    /// Unique name: alert text, metric label, `/health` entry.
    pub name: String,
    /// Where its status comes from and how it is started.
    pub source: VmSource,
    /// Host probed on port `ssh_port` while running (default: the NAT
    /// address the API reports).
    pub ssh_host: Option<String>,
    /// Port probed while running.
    pub ssh_port: u16,
    /// `false`: alert only, never start it (default `true`).
    pub auto_start: bool,
    /// This VM's `MIN_CHECK_INTERVAL`, if it has its own.
    pub min_check_interval: Option<Duration>,
    /// This VM's `MAX_CHECK_INTERVAL`, if it has its own.
    pub max_check_interval: Option<Duration>,
    /// This VM's `STUCK_AFTER` (STARTING, PROVISIONING, RESTARTING,
    /// STOPPING), if it has its own.
    pub stuck_after: Option<Duration>,
    /// This VM's `UPDATING_STUCK_AFTER`, if it has its own.
    pub updating_stuck_after: Option<Duration>,
    /// The forum topic of this VM's alerts (default: `TOPIC_ID`).
    pub topic_id: Option<i64>,
    /// Maintenance windows: within one, the VM is neither started nor
    /// alerted about.
    pub maintenance: Vec<Window>,
}

impl VmSpec {
    /// A VM with every optional setting at its default (probe the NAT
    /// address on port 22, started automatically, the global intervals and
    /// thresholds, no topic of its own, no maintenance).
    pub fn new(name: impl Into<String>, source: VmSource) -> Self {
        VmSpec {
            name: name.into(),
            source,
            ssh_host: None,
            ssh_port: DEFAULT_SSH_PORT,
            auto_start: true,
            min_check_interval: None,
            max_check_interval: None,
            stuck_after: None,
            updating_stuck_after: None,
            topic_id: None,
            maintenance: Vec::new(),
        }
    }

    /// The maintenance window `at` falls in, if any.
    pub fn maintenance_at(&self, at: DateTime<Utc>) -> Option<&Window> {
        self.maintenance.iter().find(|w| w.contains(at))
    }
}

/// A maintenance window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// Once: `[start, end)` (`start:` and `end:`, RFC 3339, in the file).
    Once {
        /// First instant inside the window.
        start: DateTime<Utc>,
        /// First instant after it.
        end: DateTime<Utc>,
    },
    /// Every week (`weekly: "Sun 02:00-04:00"`, UTC, in the file): from
    /// minute `from` to minute `to` of the week (Monday 00:00 UTC is 0); a
    /// `to` not after `from` wraps past Sunday midnight.
    Weekly {
        /// First minute inside, 0..10080.
        from: u32,
        /// First minute after, 0..10080.
        to: u32,
    },
}

/// Minutes in a week.
const WEEK: u32 = 7 * 24 * 60;

fn minute_of_week(at: DateTime<Utc>) -> u32 {
    use chrono::{Datelike, Timelike};
    at.weekday().num_days_from_monday() * 24 * 60 + at.hour() * 60 + at.minute()
}

impl Window {
    /// Whether `at` is inside.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        match *self {
            Window::Once { start, end } => start <= at && at < end,
            Window::Weekly { from, to } => {
                let m = minute_of_week(at);
                if from < to {
                    from <= m && m < to
                } else {
                    m >= from || m < to
                }
            }
        }
    }

    /// When the occurrence containing `at` ends (for a weekly window, the
    /// next end after `at`).
    pub fn end_after(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        match *self {
            Window::Once { end, .. } => end,
            Window::Weekly { to, .. } => {
                use chrono::Timelike;
                let m = minute_of_week(at);
                let minutes = (to + WEEK - m) % WEEK;
                let minutes = if minutes == 0 { WEEK } else { minutes };
                let start_of_minute = at
                    .with_second(0)
                    .and_then(|t| t.with_nanosecond(0))
                    .unwrap_or(at);
                start_of_minute + chrono::Duration::minutes(i64::from(minutes))
            }
        }
    }

    /// Parses `"Sun 02:00-04:00"` (UTC; the day `Mon`..`Sun` or its full
    /// name; an end not after the start crosses midnight into the next day).
    ///
    /// # Errors
    /// What is wrong, quoting `text`.
    pub fn weekly(text: &str) -> Result<Window, String> {
        let bad = || format!("`{text}` is not a weekly window like \"Sun 02:00-04:00\" (UTC)");
        let (day, times) = text.trim().split_once(' ').ok_or_else(bad)?;
        let day: chrono::Weekday = day.trim().parse().map_err(|_| bad())?;
        let (start, end) = times.trim().split_once('-').ok_or_else(bad)?;
        let hm = |t: &str| -> Result<u32, String> {
            let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
            let h: u32 = h.parse().map_err(|_| bad())?;
            let m: u32 = m.parse().map_err(|_| bad())?;
            if h > 23 || m > 59 {
                return Err(bad());
            }
            Ok(h * 60 + m)
        };
        let (start, end) = (hm(start)?, hm(end)?);
        let length = (end + 24 * 60 - start) % (24 * 60);
        if length == 0 {
            return Err(format!("`{text}`: the window is empty (end equals start)"));
        }
        let from = day.num_days_from_monday() * 24 * 60 + start;
        Ok(Window::Weekly {
            from,
            to: (from + length) % WEEK,
        })
    }
}

/// Where a VM's status comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VmSource {
    /// The Yandex Compute API.
    Instance {
        /// The instance id.
        id: String,
    },
    /// The original bot's proxy API (`GET {url}/info`, `POST {url}/start`).
    Proxy {
        /// Base URL without a trailing slash.
        url: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    folder_id: Option<String>,
    #[serde(default)]
    vms: Option<Vec<RawVm>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: String,
    #[serde(default)]
    instance_id: Option<String>,
    #[serde(default)]
    proxy_url: Option<String>,
    #[serde(default)]
    ssh_host: Option<String>,
    #[serde(default)]
    ssh_port: Option<u16>,
    #[serde(default)]
    auto_start: Option<bool>,
    #[serde(default)]
    min_check_interval: Option<RawDuration>,
    #[serde(default)]
    max_check_interval: Option<RawDuration>,
    #[serde(default)]
    stuck_after: Option<RawDuration>,
    #[serde(default)]
    updating_stuck_after: Option<RawDuration>,
    #[serde(default)]
    topic_id: Option<i64>,
    #[serde(default)]
    maintenance: Option<Vec<RawWindow>>,
}

/// `90` (seconds) or `"15m"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    end: Option<String>,
    #[serde(default)]
    weekly: Option<String>,
}

/// The longest interval override (as `MAX_CHECK_INTERVAL`).
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3_600);

fn duration_field(
    at: &str,
    field: &str,
    raw: Option<RawDuration>,
    max: Duration,
) -> Result<Option<Duration>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let d = match raw {
        RawDuration::Seconds(0) => return Err(format!("{at}: {field} must be at least 1 second")),
        RawDuration::Seconds(s) => Duration::from_secs(s),
        RawDuration::Text(t) => {
            crate::duration::parse(&t).map_err(|e| format!("{at}: {field}: {e}"))?
        }
    };
    if d > max {
        return Err(format!(
            "{at}: {field} must be at most {}",
            crate::status::human_duration(max)
        ));
    }
    Ok(Some(d))
}

fn instant(at: &str, field: &str, text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!(
                "{at}: {field} `{text}` is not an RFC 3339 time like 2026-12-24T22:00:00Z ({e})"
            )
        })
}

fn overrides(at: &str, vm: RawVm, spec: &mut VmSpec) -> Result<(), String> {
    spec.auto_start = vm.auto_start.unwrap_or(true);
    spec.min_check_interval = duration_field(
        at,
        "min_check_interval",
        vm.min_check_interval,
        MAX_INTERVAL,
    )?;
    spec.max_check_interval = duration_field(
        at,
        "max_check_interval",
        vm.max_check_interval,
        MAX_INTERVAL,
    )?;
    if let (Some(min), Some(max)) = (spec.min_check_interval, spec.max_check_interval)
        && max < min
    {
        return Err(format!(
            "{at}: max_check_interval must be at least its min_check_interval"
        ));
    }
    spec.stuck_after = duration_field(at, "stuck_after", vm.stuck_after, crate::duration::MAX)?;
    spec.updating_stuck_after = duration_field(
        at,
        "updating_stuck_after",
        vm.updating_stuck_after,
        crate::duration::MAX,
    )?;
    spec.topic_id = match vm.topic_id {
        Some(t) if t <= 0 => {
            return Err(format!(
                "{at}: topic_id must be a positive message_thread_id, got {t}"
            ));
        }
        t => t,
    };
    for (j, w) in vm.maintenance.unwrap_or_default().into_iter().enumerate() {
        let window = match (w.start, w.end, w.weekly) {
            (Some(start), Some(end), None) => {
                let start = instant(at, &format!("maintenance[{j}].start"), &start)?;
                let end = instant(at, &format!("maintenance[{j}].end"), &end)?;
                if end <= start {
                    return Err(format!("{at}: maintenance[{j}]: end must be after start"));
                }
                Window::Once { start, end }
            }
            (None, None, Some(weekly)) => Window::weekly(&weekly)
                .map_err(|e| format!("{at}: maintenance[{j}].weekly: {e}"))?,
            _ => {
                return Err(format!(
                    "{at}: maintenance[{j}]: give `start` and `end` (RFC 3339), or `weekly` (like \"Sun 02:00-04:00\")"
                ));
            }
        };
        spec.maintenance.push(window);
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Parses and validates the text of a `vms.yaml` read from `path` (used in
/// error messages only).
///
/// # Errors
/// A [`VmsFileError`] with the YAML error's line and column, or naming the
/// entry (`vms[2] (web-3)`) and field at fault.
pub fn parse(text: &str, path: &Path) -> Result<VmsFile, VmsFileError> {
    let fail = |reason: String| VmsFileError {
        path: path.to_owned(),
        reason,
    };
    let raw: RawFile = if text.trim().is_empty() {
        return Err(fail("the file is empty; expected a `vms:` list".into()));
    } else {
        serde_yaml::from_str(text).map_err(|e| fail(e.to_string()))?
    };
    let folder_id = match raw.folder_id.as_deref().map(str::trim) {
        None => None,
        Some(id) if valid_id(id) => Some(id.to_owned()),
        Some(id) => {
            return Err(fail(format!(
                "folder_id `{id}` is not a folder id (letters, digits and dashes)"
            )));
        }
    };
    let Some(raw_vms) = raw.vms else {
        return Err(fail("missing `vms:` list".into()));
    };
    if raw_vms.is_empty() {
        // Also on reload: an emptied list would silently stop every
        // monitor; keeping the running configuration and warning is safer.
        return Err(fail(
            "the `vms:` list is empty; nothing to watch (list at least one VM)".into(),
        ));
    }
    let mut names = HashSet::new();
    let mut sources = HashMap::new();
    let mut vms = Vec::with_capacity(raw_vms.len());
    for (i, mut vm) in raw_vms.into_iter().enumerate() {
        let name = vm.name.trim().to_owned();
        let at = format!("vms[{i}] ({name})");
        if !valid_name(&name) {
            return Err(fail(format!(
                "{at}: name must be 1-128 letters, digits, `-`, `_` or `.`"
            )));
        }
        if !names.insert(name.clone()) {
            return Err(fail(format!("{at}: duplicate name `{name}`")));
        }
        let source = match (vm.instance_id.take(), vm.proxy_url.take()) {
            (Some(id), None) => {
                let id = id.trim().to_owned();
                if !valid_id(&id) {
                    return Err(fail(format!(
                        "{at}: instance_id `{id}` is not an instance id"
                    )));
                }
                VmSource::Instance { id }
            }
            (None, Some(url)) => {
                let url = url.trim().trim_end_matches('/').to_owned();
                match reqwest::Url::parse(&url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                    _ => {
                        return Err(fail(format!(
                            "{at}: proxy_url `{url}` must be an http or https URL"
                        )));
                    }
                }
                VmSource::Proxy { url }
            }
            (Some(_), Some(_)) => {
                return Err(fail(format!(
                    "{at}: set either instance_id or proxy_url, not both"
                )));
            }
            (None, None) => {
                return Err(fail(format!("{at}: needs instance_id or proxy_url")));
            }
        };
        if let Some(first) = sources.insert(source.clone(), name.clone()) {
            let what = match &source {
                VmSource::Instance { id } => format!("instance_id `{id}`"),
                VmSource::Proxy { url } => format!("proxy_url `{url}`"),
            };
            return Err(fail(format!(
                "{at}: duplicate {what} (already used by `{first}`): two monitors would start one VM twice"
            )));
        }
        let ssh_host = match vm.ssh_host.as_deref().map(str::trim) {
            None => None,
            Some("") => return Err(fail(format!("{at}: ssh_host is empty"))),
            Some(h) => Some(h.to_owned()),
        };
        let ssh_port = match vm.ssh_port {
            None => DEFAULT_SSH_PORT,
            Some(0) => return Err(fail(format!("{at}: ssh_port must be 1-65535"))),
            Some(p) => p,
        };
        let mut spec = VmSpec::new(name, source);
        spec.ssh_host = ssh_host;
        spec.ssh_port = ssh_port;
        overrides(&at, vm, &mut spec).map_err(fail)?;
        vms.push(spec);
    }
    Ok(VmsFile { folder_id, vms })
}

/// Reads and parses `path`.
///
/// # Errors
/// As [`parse`], or when the file cannot be read.
pub async fn load(path: &Path) -> Result<VmsFile, VmsFileError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| VmsFileError {
            path: path.to_owned(),
            reason: format!("cannot read: {e}"),
        })?;
    parse(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<VmsFile, VmsFileError> {
        parse(text, Path::new("vms.yaml"))
    }

    #[test]
    fn parses_the_documented_example() {
        let file = p(r"
folder_id: b1g0123456789abcdef
vms:
  - name: web-1
    instance_id: fhm0123456789abcdef
  - name: worker-2
    instance_id: fhm9876543210fedcba
    ssh_host: 10.0.0.12
    ssh_port: 2222
  - name: legacy
    proxy_url: http://proxy.internal:8000/legacy/
")
        .unwrap();
        assert_eq!(file.folder_id.as_deref(), Some("b1g0123456789abcdef"));
        assert_eq!(file.vms.len(), 3);
        assert_eq!(file.vms[0].ssh_port, 22);
        assert_eq!(file.vms[0].ssh_host, None);
        assert_eq!(
            file.vms[1].source,
            VmSource::Instance {
                id: "fhm9876543210fedcba".into()
            }
        );
        assert_eq!(
            (file.vms[1].ssh_host.as_deref(), file.vms[1].ssh_port),
            (Some("10.0.0.12"), 2222)
        );
        assert_eq!(
            file.vms[2].source,
            VmSource::Proxy {
                url: "http://proxy.internal:8000/legacy".into()
            }
        );
        assert!(
            p("vms: []")
                .unwrap_err()
                .to_string()
                .contains("the `vms:` list is empty")
        );
    }

    #[test]
    fn parses_per_vm_overrides() {
        let file = p(r"
vms:
  - name: batch-3
    instance_id: fhm5
    auto_start: false
    min_check_interval: 10s
    max_check_interval: 300
    stuck_after: 15m
    updating_stuck_after: 1h30m
    topic_id: 42
    maintenance:
      - start: 2026-12-24T22:00:00Z
        end: 2026-12-25T02:00:00+03:00
")
        .unwrap();
        let vm = &file.vms[0];
        assert!(!vm.auto_start);
        assert_eq!(vm.min_check_interval, Some(Duration::from_secs(10)));
        assert_eq!(vm.max_check_interval, Some(Duration::from_secs(300)));
        assert_eq!(vm.stuck_after, Some(Duration::from_secs(900)));
        assert_eq!(vm.updating_stuck_after, Some(Duration::from_secs(5_400)));
        assert_eq!(vm.topic_id, Some(42));
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        // 02:00+03:00 is 23:00Z; the end is exclusive.
        let window = vm.maintenance_at(at("2026-12-24T22:30:00Z")).unwrap();
        assert_eq!(
            window.end_after(at("2026-12-24T22:30:00Z")),
            at("2026-12-24T23:00:00Z")
        );
        assert!(vm.maintenance_at(at("2026-12-24T23:00:00Z")).is_none());
        assert!(vm.maintenance_at(at("2026-12-24T21:59:59Z")).is_none());
        // The defaults.
        let plain = &p("vms:\n  - name: a\n    instance_id: i1\n").unwrap().vms[0];
        assert!(plain.auto_start && plain.maintenance.is_empty() && plain.topic_id.is_none());
    }

    #[test]
    fn weekly_windows_repeat_and_may_cross_midnight() {
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        // 2026-12-06 is a Sunday.
        let w = Window::weekly("Sun 02:00-04:00").unwrap();
        assert!(w.contains(at("2026-12-06T02:00:00Z")));
        assert!(w.contains(at("2026-12-06T03:59:59Z")));
        assert!(!w.contains(at("2026-12-06T04:00:00Z")));
        assert!(!w.contains(at("2026-12-07T03:00:00Z")), "Monday");
        assert!(w.contains(at("2026-12-13T03:00:00Z")), "the next Sunday");
        assert_eq!(
            w.end_after(at("2026-12-13T03:00:30Z")),
            at("2026-12-13T04:00:00Z")
        );
        // Sunday night into Monday: wraps past the end of the week.
        let w = Window::weekly("sunday 23:00-01:00").unwrap();
        assert!(w.contains(at("2026-12-06T23:30:00Z")));
        assert!(w.contains(at("2026-12-07T00:30:00Z")));
        assert!(!w.contains(at("2026-12-07T01:00:00Z")));
        assert_eq!(
            w.end_after(at("2026-12-06T23:30:00Z")),
            at("2026-12-07T01:00:00Z")
        );
        let file = p(
            "vms:\n  - name: a\n    instance_id: i1\n    maintenance:\n      - weekly: \"Sat 22:00-02:00\"\n",
        )
        .unwrap();
        assert!(
            file.vms[0]
                .maintenance_at(at("2026-12-06T01:00:00Z"))
                .is_some()
        );
    }

    #[test]
    fn the_deployment_example_is_valid() {
        let file = p(include_str!("../../../deploy/vm-watchdog/vms.example.yaml")).unwrap();
        let batch = file.vms.iter().find(|v| v.name == "batch-3").unwrap();
        assert!(!batch.auto_start);
        assert_eq!(batch.topic_id, Some(77));
        assert_eq!(batch.maintenance.len(), 2);
    }

    #[test]
    fn override_errors_name_the_vm_and_field() {
        let vm = "vms:\n  - name: a\n    instance_id: i1\n";
        let cases = [
            (
                "    min_check_interval: 0\n",
                "vms[0] (a): min_check_interval must be at least 1 second",
            ),
            (
                "    max_check_interval: 2d\n",
                "vms[0] (a): max_check_interval must be at most 24h",
            ),
            (
                "    min_check_interval: 1m\n    max_check_interval: 30s\n",
                "max_check_interval must be at least its min_check_interval",
            ),
            (
                "    stuck_after: soon\n",
                "vms[0] (a): stuck_after: `soon` is not a duration",
            ),
            (
                "    updating_stuck_after: 0s\n",
                "updating_stuck_after: `0s` must be more than zero",
            ),
            (
                "    topic_id: 0\n",
                "topic_id must be a positive message_thread_id",
            ),
            ("    auto_start: maybe\n", "auto_start"),
            (
                "    maintenance:\n      - start: tomorrow\n        end: 2026-12-25T02:00:00Z\n",
                "vms[0] (a): maintenance[0].start `tomorrow` is not an RFC 3339 time",
            ),
            (
                "    maintenance:\n      - start: 2026-12-25T02:00:00Z\n        end: 2026-12-25T01:00:00Z\n",
                "maintenance[0]: end must be after start",
            ),
            (
                "    maintenance:\n      - start: 2026-12-25T02:00:00Z\n",
                "maintenance[0]: give `start` and `end`",
            ),
            (
                "    maintenance:\n      - weekly: Someday 02:00-04:00\n",
                "vms[0] (a): maintenance[0].weekly: `Someday 02:00-04:00` is not a weekly window",
            ),
            (
                "    maintenance:\n      - weekly: Sun 02:00-02:00\n",
                "the window is empty",
            ),
            (
                "    maintenance:\n      - weekly: Sun 25:00-02:00\n",
                "is not a weekly window",
            ),
        ];
        for (extra, expected) in cases {
            let text = format!("{vm}{extra}");
            let err = p(&text).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{text:?}: {err} does not contain {expected:?}"
            );
        }
    }

    #[test]
    fn errors_say_exactly_what_is_wrong() {
        let cases = [
            ("", "empty"),
            ("vms: [", "line"),
            ("folder_id: x", "missing `vms:`"),
            (
                "vms:\n  - name: a\n",
                "vms[0] (a): needs instance_id or proxy_url",
            ),
            (
                "vms:\n  - name: a\n    instance_id: i1\n  - name: a\n    instance_id: i2\n",
                "vms[1] (a): duplicate name",
            ),
            (
                "vms:\n  - name: a\n    instance_id: i1\n  - name: b\n    instance_id: i1\n",
                "vms[1] (b): duplicate instance_id `i1` (already used by `a`)",
            ),
            (
                "vms:\n  - name: a\n    proxy_url: http://p/x\n  - name: b\n    proxy_url: http://p/x/\n",
                "vms[1] (b): duplicate proxy_url `http://p/x`",
            ),
            (
                "vms:\n  - name: a\n    instance_id: i1\n    proxy_url: http://x\n",
                "not both",
            ),
            (
                "vms:\n  - name: a\n    proxy_url: ftp://x\n",
                "must be an http",
            ),
            (
                "vms:\n  - name: a b\n    instance_id: i1\n",
                "vms[0] (a b): name",
            ),
            (
                "vms:\n  - name: a\n    instance_id: i1\n    ssh_port: 0\n",
                "ssh_port",
            ),
            (
                "vms:\n  - name: a\n    instance_id: i1\n    ssh_port: 70000\n",
                "line 4",
            ),
            (
                "vms:\n  - name: a\n    instanceid: i1\n",
                "unknown field `instanceid`",
            ),
            ("folder_id: 'a b'\nvms: []\n", "folder_id"),
        ];
        for (text, expected) in cases {
            let err = p(text).unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{text:?}: {err} does not contain {expected:?}"
            );
            assert!(err.to_string().starts_with("vms.yaml: "), "{err}");
        }
    }
}
