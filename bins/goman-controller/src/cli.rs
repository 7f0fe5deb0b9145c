//! `goman-controller cluster apply | get | list | delete | stop | start`:
//! desired state, written to the state store with conditional writes (a
//! concurrent writer makes the command read again and retry).

use std::io::{Read as _, Write as _};
use std::path::Path;

use chrono::Utc;

use crate::model::{ClusterResource, ClusterSpec, Manifest, Metadata};
use crate::store::{Expect, StateStore, StoreError};

/// A CLI failure.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The manifest.
    #[error(transparent)]
    Invalid(#[from] crate::model::Invalid),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such cluster.
    #[error("cluster {0} not found")]
    NotFound(String),
    /// The cluster is being deleted.
    #[error("cluster {0} is being deleted")]
    Deleting(String),
    /// Reading the manifest or writing the output.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

const ATTEMPTS: u32 = 5;

/// Creates or updates a cluster from a manifest; returns the document.
///
/// # Errors
/// [`CliError`].
pub async fn apply(
    store: &StateStore,
    profile: &str,
    text: &str,
) -> Result<ClusterResource, CliError> {
    let manifest = Manifest::parse(text)?;
    let name = manifest.metadata.name.clone();
    for _ in 0..ATTEMPTS {
        let result = match store.get(&name).await? {
            None => {
                let doc = ClusterResource {
                    api_version: crate::model::API_VERSION.into(),
                    kind: crate::model::KIND.into(),
                    metadata: Metadata {
                        name: name.clone(),
                        namespace: profile.to_owned(),
                        uid: uuid::Uuid::new_v4().to_string(),
                        resource_version: 1,
                        generation: 1,
                        creation_timestamp: Some(Utc::now()),
                        deletion_timestamp: None,
                        labels: manifest.metadata.labels.clone(),
                    },
                    spec: manifest.spec.clone(),
                    status: Default::default(),
                };
                store.put(&doc, &Expect::Absent).await.map(|_| doc)
            }
            Some(stored) => {
                let mut doc = stored.doc;
                if doc.metadata.deletion_timestamp.is_some() {
                    return Err(CliError::Deleting(name));
                }
                if doc.spec == manifest.spec && doc.metadata.labels == manifest.metadata.labels {
                    return Ok(doc);
                }
                if doc.spec != manifest.spec {
                    doc.metadata.generation += 1;
                    doc.spec = manifest.spec.clone();
                }
                doc.metadata.labels = manifest.metadata.labels.clone();
                doc.metadata.resource_version += 1;
                store
                    .put(&doc, &Expect::Etag(stored.etag))
                    .await
                    .map(|_| doc)
            }
        };
        match result {
            Ok(doc) => return Ok(doc),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict { name }.into())
}

/// Changes a cluster with `change` (which returns whether it changed
/// anything), retrying on conflicts.
async fn modify(
    store: &StateStore,
    name: &str,
    change: impl Fn(&mut ClusterResource) -> bool,
) -> Result<ClusterResource, CliError> {
    for _ in 0..ATTEMPTS {
        let stored = store
            .get(name)
            .await?
            .ok_or_else(|| CliError::NotFound(name.to_owned()))?;
        let mut doc = stored.doc;
        if !change(&mut doc) {
            return Ok(doc);
        }
        doc.metadata.resource_version += 1;
        match store.put(&doc, &Expect::Etag(stored.etag)).await {
            Ok(_) => return Ok(doc),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict {
        name: name.to_owned(),
    }
    .into())
}

/// Asks for deletion.
///
/// # Errors
/// [`CliError`].
pub async fn delete(store: &StateStore, name: &str) -> Result<ClusterResource, CliError> {
    modify(store, name, |doc| {
        if doc.metadata.deletion_timestamp.is_some() {
            return false;
        }
        doc.metadata.deletion_timestamp = Some(Utc::now());
        true
    })
    .await
}

/// Stops (`true`) or starts (`false`) every instance.
///
/// # Errors
/// [`CliError`].
pub async fn set_stopped(
    store: &StateStore,
    name: &str,
    stopped: bool,
) -> Result<ClusterResource, CliError> {
    modify(store, name, |doc| {
        if doc.spec.stopped == stopped || doc.metadata.deletion_timestamp.is_some() {
            return false;
        }
        doc.spec = ClusterSpec {
            stopped,
            ..doc.spec.clone()
        };
        doc.metadata.generation += 1;
        true
    })
    .await
}

/// Reads a manifest from a file, or standard input for `-`.
///
/// # Errors
/// I/O errors.
pub fn read_manifest(path: &Path) -> Result<String, CliError> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(64 * 1024 + 1)
            .read_to_string(&mut text)?;
    } else {
        std::fs::File::open(path)?
            .take(64 * 1024 + 1)
            .read_to_string(&mut text)?;
    }
    Ok(text)
}

/// Writes `value` as pretty JSON on standard output.
///
/// # Errors
/// I/O errors.
pub fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::other)?;
    writeln!(out)?;
    Ok(())
}

/// Writes the `list` table on standard output.
///
/// # Errors
/// Store and I/O errors.
pub async fn list(store: &StateStore) -> Result<(), CliError> {
    let mut rows = Vec::new();
    for (name, _) in store.list().await? {
        if let Some(stored) = store.get(&name).await? {
            let d = stored.doc;
            rows.push(format!(
                "{:<24} {:<13} {:>7} {:>7} {:>5}  {}",
                name,
                d.status.phase.as_str(),
                d.metadata.generation,
                d.status.observed_generation,
                d.spec.master_count,
                d.status.api_endpoint.unwrap_or_default()
            ));
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<24} {:<13} {:>7} {:>7} {:>5}  ENDPOINT",
        "NAME", "PHASE", "GEN", "OBSERVED", "MASTERS"
    )?;
    for row in rows {
        writeln!(out, "{row}")?;
    }
    Ok(())
}
