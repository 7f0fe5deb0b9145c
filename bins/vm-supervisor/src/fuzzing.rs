//! The properties the fuzz targets `supervisor_yaml` and `supervisor_admin`
//! check (`fuzz/`, docs/RELIABILITY.md); not a stable API.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use axum::Json;

use crate::config::Timings;
use crate::spec::{self, SpecError, VmSpec};

/// The fields a [`SpecError`] may name under `vms[i]` or `vm`.
const FIELDS: &[&str] = &[
    "id",
    "command",
    "socket",
    "health_interval",
    "health_timeout",
    "retry_interval",
    "start_timeout",
    "failure_threshold",
    "recovery_threshold",
];

/// `SUPERVISOR_CONFIG` as the supervisor reads it (at start and on every
/// reload).
///
/// Properties: an accepted file holds only valid specs
/// ([`VmSpec::validate`] and the invariants below), unique ids and unique
/// expanded sockets; each spec survives the registry's JSON round trip and
/// the whole file a YAML round trip unchanged; a rejection names the file
/// (a YAML error) or the field (`vms[2].start_calls[0].path`).
pub fn supervisor_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("vm-supervisor.yaml");
    match spec::parse(text, path) {
        Ok(file) => {
            let mut ids = HashSet::new();
            let mut sockets = HashSet::new();
            for (i, vm) in file.vms.iter().enumerate() {
                vm.validate(&format!("vms[{i}]"))
                    .unwrap_or_else(|e| panic!("accepted, yet {e}"));
                assert!(ids.insert(vm.id.clone()), "id {} twice", vm.id);
                assert!(sockets.insert(vm.socket_path()), "socket twice");
                spec_invariants(vm);
            }
            let yaml = serde_yaml::to_string(&file).expect("a file serializes");
            let back = spec::parse(&yaml, path)
                .unwrap_or_else(|e| panic!("written back, the file is refused: {e}\n{yaml}"));
            assert_eq!(back.vms, file.vms, "written back:\n{yaml}");
        }
        Err(e) => field_named(&e, "vms[", path.to_str()),
    }
}

/// `POST /vms`: the JSON body as the admin API decodes it (axum's `Json`),
/// then the checks `Supervisor::add` makes before anything is stored.
///
/// Properties: a body that does not decode is a 4xx rejection with a
/// message; a decoded spec is either valid (it then survives the
/// registry's JSON round trip unchanged and satisfies the invariants) or
/// refused with an error naming the field under `vm.`.
pub fn supervisor_admin(data: &[u8]) {
    match Json::<VmSpec>::from_bytes(data) {
        Ok(Json(vm)) => match vm.validate("vm") {
            Ok(()) => spec_invariants(&vm),
            Err(e) => field_named(&e, "vm.", None),
        },
        Err(rejection) => {
            assert!(rejection.status().is_client_error(), "{rejection:?}");
            assert!(!rejection.body_text().is_empty());
        }
    }
}

/// A rejection names a field under `prefix`, or the file.
fn field_named(e: &SpecError, prefix: &str, file: Option<&str>) {
    if file == Some(e.field.as_str()) {
        assert!(!e.reason.is_empty());
        return;
    }
    let rest = e
        .field
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{e}: names no field"));
    let rest = if prefix == "vms[" {
        let (index, rest) = rest.split_once("].").expect("vms[i].field");
        assert!(index.parse::<usize>().is_ok(), "{e}");
        rest
    } else {
        rest
    };
    let known = FIELDS.contains(&rest)
        || rest
            .strip_prefix("start_calls[")
            .and_then(|r| r.split_once("]."))
            .is_some_and(|(i, f)| i.parse::<usize>().is_ok() && (f == "method" || f == "path"));
    assert!(known, "{e}: an unknown field");
    assert!(e.to_string().starts_with(&e.field));
}

/// What a valid spec guarantees, and what the supervisor derives from it.
fn spec_invariants(vm: &VmSpec) {
    assert!(spec::valid_id(&vm.id));
    assert!(!vm.command.as_os_str().is_empty());
    assert!(!vm.socket.trim().is_empty());
    for call in &vm.start_calls {
        assert!(call.method.parse::<http::Method>().is_ok());
        assert!(call.path.starts_with('/'));
    }
    let o = &vm.overrides;
    for d in [
        o.health_interval,
        o.health_timeout,
        o.retry_interval,
        o.start_timeout,
    ] {
        assert_ne!(d, Some(Duration::ZERO));
    }
    assert_ne!(o.failure_threshold, Some(0));
    assert_ne!(o.recovery_threshold, Some(0));
    // The registry keeps the spec as JSON and reads it back at start.
    let json = serde_json::to_string(vm).expect("a spec serializes");
    let back: VmSpec = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("the registry's JSON is refused: {e}\n{json}"));
    assert_eq!(&back, vm, "JSON round trip: {json}");
    // The command line and the timings derived from it.
    let line = vm.command_line();
    assert_eq!(line.len(), vm.args.len() + 1);
    if !vm.socket.contains("{id}") {
        assert_eq!(vm.socket_path(), Path::new(&vm.socket));
    }
    let t = Timings::default().with(o);
    assert!(
        t.health_timeout <= t.health_interval,
        "checks would overlap"
    );
    assert!(!t.health_timeout.is_zero());
    let mut last = Duration::ZERO;
    for attempt in 1..=12 {
        let wait = t.backoff_before(attempt);
        assert!(
            wait <= t.max_retry_interval && wait >= last,
            "attempt {attempt}: {wait:?}"
        );
        last = wait;
    }
}
