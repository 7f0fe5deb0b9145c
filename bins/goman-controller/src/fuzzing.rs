//! The properties the fuzz target `goman_manifest` checks (`fuzz/`,
//! docs/RELIABILITY.md); not a stable API.

use chrono::{TimeZone as _, Utc};

use crate::model::{
    API_VERSION, ClusterResource, ClusterStatus, KIND, Manifest, Metadata, Mode, validate_name,
};

/// The fields an [`crate::model::Invalid`] from [`Manifest::parse`] may name.
const FIELDS: &[&str] = &[
    "manifest",
    "apiVersion",
    "kind",
    "metadata.name",
    "spec.provider",
    "spec.region",
    "spec.instanceType",
    "spec.masterCount",
    "spec.k3sVersion",
    "spec.tags",
];

/// Each input is tried both as a user's `cluster.yaml` ([`Manifest::parse`])
/// and as a stored `ClusterResource` document (the JSON the controller
/// reads back from S3 or disk).
///
/// Properties: an accepted manifest has a valid name and spec (mode and
/// master count agree, tags within limits...), its `apiVersion` and `kind`
/// are absent or goman's; the document `cluster apply` stores for it reads
/// back equal (so applying it again changes nothing), and the manifest
/// written as JSON (which the parser promises to read, a subset of YAML)
/// parses to the same value; a rejection names one of the manifest's
/// fields. A stored document that decodes is written back and read again
/// unchanged, and writing is deterministic.
pub fn goman_manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        manifest(text);
    }
    stored(data);
}

fn manifest(text: &str) {
    let manifest = match Manifest::parse(text) {
        Ok(m) => m,
        Err(e) => {
            assert!(FIELDS.contains(&e.field), "{e}: an unknown field");
            assert!(!e.reason.is_empty());
            return;
        }
    };
    validate_name(&manifest.metadata.name).expect("a valid name");
    manifest.spec.validate().expect("a valid spec");
    assert!(
        manifest
            .api_version
            .as_deref()
            .is_none_or(|v| v == API_VERSION)
    );
    assert!(manifest.kind.as_deref().is_none_or(|k| k == KIND));
    let masters = match manifest.spec.mode {
        Mode::Developer => 1,
        Mode::Ha => 3,
    };
    assert_eq!(manifest.spec.master_count, masters);
    // What `cluster apply` stores for a new cluster.
    let doc = ClusterResource {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        metadata: Metadata {
            name: manifest.metadata.name.clone(),
            namespace: "default".into(),
            uid: "00000000-0000-4000-8000-000000000000".into(),
            resource_version: 1,
            generation: 1,
            creation_timestamp: Utc.with_ymd_and_hms(2026, 12, 7, 5, 0, 0).single(),
            deletion_timestamp: None,
            labels: manifest.metadata.labels.clone(),
        },
        spec: manifest.spec.clone(),
        status: ClusterStatus::default(),
    };
    let bytes = serde_json::to_vec_pretty(&doc).expect("a document serializes");
    let back: ClusterResource = serde_json::from_slice(&bytes).expect("the stored document");
    assert_eq!(back, doc, "stored and read back");
    // The same manifest as JSON.
    let json = serde_json::json!({
        "apiVersion": manifest.api_version,
        "kind": manifest.kind,
        "metadata": {"name": manifest.metadata.name, "labels": manifest.metadata.labels},
        "spec": manifest.spec,
    })
    .to_string();
    let again = Manifest::parse(&json)
        .unwrap_or_else(|e| panic!("the manifest as JSON is refused: {e}\n{json}"));
    assert_eq!(again, manifest, "as JSON: {json}");
}

fn stored(bytes: &[u8]) {
    let Ok(doc) = serde_json::from_slice::<ClusterResource>(bytes) else {
        return;
    };
    let written = serde_json::to_vec_pretty(&doc).expect("a document serializes");
    let back: ClusterResource = serde_json::from_slice(&written).unwrap_or_else(|e| {
        panic!(
            "a document written back is unreadable: {e}\n{}",
            String::from_utf8_lossy(&written)
        )
    });
    assert_eq!(back, doc, "{}", String::from_utf8_lossy(&written));
    assert_eq!(
        serde_json::to_vec_pretty(&back).expect("serializes"),
        written,
        "deterministic"
    );
    for node in &doc.status.instances {
        let _ = node.node_name(&doc.metadata.name);
    }
}
