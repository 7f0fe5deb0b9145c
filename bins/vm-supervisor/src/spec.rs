//! The VMs to supervise: `SUPERVISOR_CONFIG` (YAML) or `POST /vms` (JSON),
//! one [`VmSpec`] each. `{id}` and `{socket}` expand in `args`, `{id}` in
//! `socket`, `workdir` and `env` values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::opt_serde;

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorFile {
    /// The VMs.
    #[serde(default)]
    pub vms: Vec<VmSpec>,
}

/// One HTTP call over the API socket once it answers (Firecracker's
/// `PUT /actions {"action_type": "InstanceStart"}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartCall {
    /// `GET`, `PUT`, `POST`, `PATCH`...
    pub method: String,
    /// Request path, starting with `/`.
    pub path: String,
    /// JSON body, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

/// Per-VM overrides of the supervisor's timings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Health check interval.
    #[serde(default, with = "opt_serde", skip_serializing_if = "Option::is_none")]
    pub health_interval: Option<Duration>,
    /// Health check timeout.
    #[serde(default, with = "opt_serde", skip_serializing_if = "Option::is_none")]
    pub health_timeout: Option<Duration>,
    /// Failed checks in a row that make the VM unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// Successful checks in a row that make an unhealthy VM healthy again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_threshold: Option<u32>,
    /// First backoff between recovery attempts.
    #[serde(default, with = "opt_serde", skip_serializing_if = "Option::is_none")]
    pub retry_interval: Option<Duration>,
    /// Backoff cap.
    #[serde(default, with = "opt_serde", skip_serializing_if = "Option::is_none")]
    pub max_retry_interval: Option<Duration>,
    /// How long a started process has to answer `GET /` (the start-up
    /// grace period: no health verdict before it answers).
    #[serde(default, with = "opt_serde", skip_serializing_if = "Option::is_none")]
    pub start_timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL when stopping the process group.
    #[serde(default, with = "opt_serde", skip_serializing_if = "Option::is_none")]
    pub stop_grace: Option<Duration>,
    /// Running this long without a failure resets the attempt count.
    #[serde(default, with = "opt_serde", skip_serializing_if = "Option::is_none")]
    pub stable_period: Option<Duration>,
}

/// One VM as configured (placeholders not yet expanded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Letters, digits, `-` and `_`.
    pub id: String,
    /// The program (for example `/usr/bin/firecracker`).
    pub command: PathBuf,
    /// Its arguments; `{socket}` and `{id}` expand.
    #[serde(default)]
    pub args: Vec<String>,
    /// The API socket; `{id}` expands.
    pub socket: String,
    /// Extra environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory; `{id}` expands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Calls made over the socket once it answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_calls: Vec<StartCall>,
    /// Exit codes meaning "stopped on purpose": not restarted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_restart_exit_codes: Vec<i32>,
    /// Timing overrides.
    #[serde(flatten)]
    pub overrides: Overrides,
}

/// A bad file or spec; `field` says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    /// Where (`vms[2].id`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Whether `id` is a valid VM id.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl VmSpec {
    /// Checks the spec.
    ///
    /// # Errors
    /// A [`SpecError`] naming the field under `at` (for example `vms[0]`).
    pub fn validate(&self, at: &str) -> Result<(), SpecError> {
        if !valid_id(&self.id) {
            return Err(err(
                format!("{at}.id"),
                format!("`{}` must be 1-64 letters, digits, - or _", self.id),
            ));
        }
        if self.command.as_os_str().is_empty() {
            return Err(err(format!("{at}.command"), "is empty"));
        }
        if self.socket.trim().is_empty() {
            return Err(err(format!("{at}.socket"), "is empty"));
        }
        for (i, call) in self.start_calls.iter().enumerate() {
            if call.method.parse::<http::Method>().is_err() {
                return Err(err(
                    format!("{at}.start_calls[{i}].method"),
                    format!("`{}` is not an HTTP method", call.method),
                ));
            }
            if !call.path.starts_with('/') || call.path.parse::<http::uri::PathAndQuery>().is_err()
            {
                return Err(err(
                    format!("{at}.start_calls[{i}].path"),
                    format!("`{}` must be a path starting with /", call.path),
                ));
            }
        }
        let o = &self.overrides;
        for (name, d) in [
            ("health_interval", o.health_interval),
            ("health_timeout", o.health_timeout),
            ("retry_interval", o.retry_interval),
            ("start_timeout", o.start_timeout),
        ] {
            if d == Some(Duration::ZERO) {
                return Err(err(format!("{at}.{name}"), "must be above zero"));
            }
        }
        if let (Some(i), Some(t)) = (o.health_interval, o.health_timeout)
            && t > i
        {
            return Err(err(
                format!("{at}.health_timeout"),
                "must not exceed health_interval (checks never overlap)",
            ));
        }
        for (name, n) in [
            ("failure_threshold", o.failure_threshold),
            ("recovery_threshold", o.recovery_threshold),
        ] {
            if n == Some(0) {
                return Err(err(format!("{at}.{name}"), "must be at least 1"));
            }
        }
        Ok(())
    }

    fn expand_id(&self, s: &str) -> String {
        s.replace("{id}", &self.id)
    }

    /// The API socket path, expanded.
    pub fn socket_path(&self) -> PathBuf {
        PathBuf::from(self.expand_id(&self.socket))
    }

    /// The whole command line a started process has: the command, then
    /// the arguments, expanded (what `/proc/<pid>/cmdline` shows).
    pub fn command_line(&self) -> Vec<String> {
        std::iter::once(self.command.to_string_lossy().into_owned())
            .chain(self.expanded_args())
            .collect()
    }

    /// The arguments with `{socket}` and `{id}` expanded.
    pub fn expanded_args(&self) -> Vec<String> {
        let socket = self.socket_path();
        let socket = socket.to_string_lossy();
        self.args
            .iter()
            .map(|a| self.expand_id(&a.replace("{socket}", &socket)))
            .collect()
    }

    /// The environment, values expanded.
    pub fn expanded_env(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(k, v)| (k.clone(), self.expand_id(v)))
            .collect()
    }

    /// The working directory, expanded.
    pub fn expanded_workdir(&self) -> Option<PathBuf> {
        self.workdir.as_deref().map(|w| self.expand_id(w).into())
    }
}

/// Parses and validates a file's text; `path` is for messages.
///
/// # Errors
/// A [`SpecError`] naming the field (`vms[1].id`) or the YAML position.
pub fn parse(text: &str, path: &Path) -> Result<SupervisorFile, SpecError> {
    let file: SupervisorFile =
        serde_yaml::from_str(text).map_err(|e| err(path.display().to_string(), e.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    for (i, vm) in file.vms.iter().enumerate() {
        let at = format!("vms[{i}]");
        vm.validate(&at)?;
        if !seen.insert(vm.id.clone()) {
            return Err(err(
                format!("{at}.id"),
                format!("`{}` appears twice", vm.id),
            ));
        }
    }
    let mut sockets = std::collections::HashSet::new();
    for (i, vm) in file.vms.iter().enumerate() {
        if !sockets.insert(vm.socket_path()) {
            return Err(err(
                format!("vms[{i}].socket"),
                format!("{} is another VM's socket", vm.socket_path().display()),
            ));
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
vms:
  - id: vm-1
    command: /usr/bin/firecracker
    args: ["--api-sock", "{socket}", "--id", "{id}"]
    socket: /run/vm-supervisor/{id}.sock
    env: {FOO: bar, HOME_OF: "/var/{id}"}
    workdir: /var/lib/vms/{id}
    start_calls:
      - {method: PUT, path: /actions, body: {action_type: InstanceStart}}
    no_restart_exit_codes: [0]
    health_interval: 5s
    start_timeout: 500ms
"#;

    #[test]
    fn the_issue_example_parses_and_expands() {
        let file = parse(EXAMPLE, Path::new("x.yaml")).unwrap();
        let vm = &file.vms[0];
        assert_eq!(
            vm.socket_path(),
            PathBuf::from("/run/vm-supervisor/vm-1.sock")
        );
        assert_eq!(
            vm.expanded_args(),
            ["--api-sock", "/run/vm-supervisor/vm-1.sock", "--id", "vm-1"]
        );
        assert_eq!(
            vm.expanded_workdir(),
            Some(PathBuf::from("/var/lib/vms/vm-1"))
        );
        assert!(
            vm.expanded_env()
                .contains(&("HOME_OF".into(), "/var/vm-1".into()))
        );
        assert_eq!(vm.overrides.health_interval, Some(Duration::from_secs(5)));
        assert_eq!(vm.overrides.start_timeout, Some(Duration::from_millis(500)));
        assert_eq!(
            vm.start_calls[0].body.as_ref().unwrap()["action_type"],
            "InstanceStart"
        );
        assert_eq!(vm.no_restart_exit_codes, [0]);
        // JSON round trip (the registry keeps the spec as JSON).
        let json = serde_json::to_string(vm).unwrap();
        assert_eq!(&serde_json::from_str::<VmSpec>(&json).unwrap(), vm);
    }

    #[test]
    fn float_bodies_survive_the_registrys_json() {
        // Found by the `supervisor_admin` fuzz target: serde_json's default
        // float parser may read a number one ulp off, so the spec read back
        // from the registry differed from the file's (a spurious change at
        // every reload, and another number sent to the VMM).
        let yaml = "vms:\n  - {id: a, command: /bin/x, socket: /tmp/s, start_calls: [{method: PUT, path: /x, body: {i: 18446744073709551615, f: 0.1, g: 1e300}}]}\n";
        let vm = &parse(yaml, Path::new("f")).unwrap().vms[0];
        let json = serde_json::to_string(vm).unwrap();
        assert_eq!(
            &serde_json::from_str::<VmSpec>(&json).unwrap(),
            vm,
            "{json}"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let bad_id = "vms:\n  - {id: 'a b', command: /bin/x, socket: /tmp/s}\n";
        assert_eq!(
            parse(bad_id, Path::new("f")).unwrap_err().field,
            "vms[0].id"
        );
        let twice = "vms:\n  - {id: a, command: /bin/x, socket: '/tmp/{id}'}\n  - {id: a, command: /bin/x, socket: /tmp/b}\n";
        assert_eq!(parse(twice, Path::new("f")).unwrap_err().field, "vms[1].id");
        let same_socket = "vms:\n  - {id: a, command: /bin/x, socket: /tmp/s}\n  - {id: b, command: /bin/x, socket: /tmp/s}\n";
        assert_eq!(
            parse(same_socket, Path::new("f")).unwrap_err().field,
            "vms[1].socket"
        );
        let bad_method = "vms:\n  - {id: a, command: /bin/x, socket: /tmp/s, start_calls: [{method: 'NO PE', path: /}]}\n";
        assert_eq!(
            parse(bad_method, Path::new("f")).unwrap_err().field,
            "vms[0].start_calls[0].method"
        );
        let zero = "vms:\n  - {id: a, command: /bin/x, socket: /tmp/s, health_interval: 0s}\n";
        assert_eq!(
            parse(zero, Path::new("f")).unwrap_err().field,
            "vms[0].health_interval"
        );
        let bad_duration =
            "vms:\n  - {id: a, command: /bin/x, socket: /tmp/s, health_interval: soon}\n";
        assert!(parse(bad_duration, Path::new("f")).is_err());
        let unknown = "vms:\n  - {id: a, command: /bin/x, socket: /tmp/s, colour: red}\n";
        assert!(parse(unknown, Path::new("f")).is_err());
    }
}
