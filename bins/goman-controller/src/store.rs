//! The state store: one JSON document per cluster at
//! `state/{profile}/clusters/{name}.json`, in S3 or (the embedded default)
//! a local directory with the same layout.
//!
//! Every write is conditional on the version the writer read (the S3 ETag
//! with `If-Match`, or `If-None-Match: *` to create): a writer that read an
//! older document gets [`StoreError::Conflict`] and cannot overwrite newer
//! state. The reconciler adds the lock check in front (see `lock`): that is
//! the fencing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;
use sha2::{Digest, Sha256};

use crate::aws::{Aws, AwsError, Service};
use crate::model::ClusterResource;

/// A document and the version it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The document.
    pub doc: ClusterResource,
    /// Its version: the S3 ETag, or a content hash for the local store.
    pub etag: String,
}

/// What a write expects to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// No document yet.
    Absent,
    /// The document at this version.
    Etag(String),
}

/// A state store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The document changed since it was read (or exists when it should
    /// not): read again.
    #[error("state of {name} changed since it was read (conditional write refused)")]
    Conflict {
        /// The cluster.
        name: String,
    },
    /// S3 failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The local directory failed.
    #[error("state directory: {0}")]
    Io(#[from] io::Error),
    /// A document that does not parse.
    #[error("state of {name} is not a valid cluster document: {reason}")]
    Corrupt {
        /// The cluster.
        name: String,
        /// The parser's message.
        reason: String,
    },
}

/// S3 or a local directory.
#[derive(Debug, Clone)]
pub enum StateStore {
    /// `s3://bucket/state/{profile}/clusters/`.
    S3 {
        /// The clients.
        aws: Aws,
        /// The bucket.
        bucket: String,
        /// `state/{profile}/clusters/`.
        prefix: String,
    },
    /// `{dir}/state/{profile}/clusters/`.
    Local {
        /// The directory holding the documents.
        dir: PathBuf,
    },
}

/// Documents larger than this are refused as corrupt (a cluster document is
/// a few KiB).
const MAX_DOCUMENT: usize = 1024 * 1024;

fn prefix(profile: &str) -> String {
    format!("state/{profile}/clusters/")
}

fn parse(name: &str, bytes: &[u8]) -> Result<ClusterResource, StoreError> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(StoreError::Corrupt {
            name: name.to_owned(),
            reason: format!("{} bytes (at most {MAX_DOCUMENT})", bytes.len()),
        });
    }
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

fn content_etag(bytes: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&Sha256::digest(bytes)[..16]))
}

impl StateStore {
    /// The S3 store.
    pub fn s3(aws: Aws, bucket: impl Into<String>, profile: &str) -> StateStore {
        StateStore::S3 {
            aws,
            bucket: bucket.into(),
            prefix: prefix(profile),
        }
    }

    /// The local store under `root` (created if missing).
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn local(root: &Path, profile: &str) -> Result<StateStore, StoreError> {
        let dir = root.join(prefix(profile));
        fs::create_dir_all(&dir)?;
        Ok(StateStore::Local { dir })
    }

    /// Reads a cluster's document.
    ///
    /// # Errors
    /// S3 or disk failures, a corrupt document.
    pub async fn get(&self, name: &str) -> Result<Option<Stored>, StoreError> {
        match self {
            StateStore::S3 {
                aws,
                bucket,
                prefix,
            } => {
                let key = format!("{prefix}{name}.json");
                let result = aws
                    .call(Service::S3, "GetObject", |_| {
                        aws.s3.get_object().bucket(bucket).key(&key).send()
                    })
                    .await;
                let out = match result {
                    Ok(out) => out,
                    Err(e) if e.is_code("NoSuchKey") || e.status == Some(404) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let etag = out.e_tag().unwrap_or_default().to_owned();
                let bytes = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| AwsError {
                        kind: crate::aws::ErrorKind::Transient,
                        ..AwsError::invalid(
                            Service::S3,
                            "GetObject",
                            format!("reading the body: {e}"),
                        )
                    })?
                    .into_bytes();
                Ok(Some(Stored {
                    doc: parse(name, &bytes)?,
                    etag,
                }))
            }
            StateStore::Local { dir } => {
                let path = dir.join(format!("{name}.json"));
                let dir = dir.clone();
                let name = name.to_owned();
                tokio::task::spawn_blocking(move || {
                    let _lock = DirLock::exclusive(&dir)?;
                    match fs::read(&path) {
                        Ok(bytes) => Ok(Some(Stored {
                            etag: content_etag(&bytes),
                            doc: parse(&name, &bytes)?,
                        })),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                        Err(e) => Err(e.into()),
                    }
                })
                .await
                .map_err(io::Error::other)?
            }
        }
    }

    /// Names and versions of every cluster.
    ///
    /// # Errors
    /// S3 or disk failures.
    pub async fn list(&self) -> Result<Vec<(String, String)>, StoreError> {
        match self {
            StateStore::S3 {
                aws,
                bucket,
                prefix,
            } => {
                let mut out = Vec::new();
                let mut token: Option<String> = None;
                loop {
                    let page = aws
                        .call(Service::S3, "ListObjectsV2", |_| {
                            aws.s3
                                .list_objects_v2()
                                .bucket(bucket)
                                .prefix(prefix)
                                .set_continuation_token(token.clone())
                                .send()
                        })
                        .await?;
                    for object in page.contents() {
                        let Some(key) = object.key() else { continue };
                        let Some(name) = key
                            .strip_prefix(prefix.as_str())
                            .and_then(|k| k.strip_suffix(".json"))
                        else {
                            continue;
                        };
                        if crate::model::validate_name(name).is_ok() {
                            out.push((
                                name.to_owned(),
                                object.e_tag().unwrap_or_default().to_owned(),
                            ));
                        }
                    }
                    match page.next_continuation_token() {
                        Some(next) if page.is_truncated() == Some(true) => {
                            token = Some(next.to_owned());
                        }
                        _ => break,
                    }
                }
                out.sort();
                Ok(out)
            }
            StateStore::Local { dir } => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || {
                    let _lock = DirLock::exclusive(&dir)?;
                    let mut out = Vec::new();
                    for entry in fs::read_dir(&dir)? {
                        let entry = entry?;
                        let file = entry.file_name();
                        let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
                            continue;
                        };
                        if crate::model::validate_name(name).is_err() {
                            continue;
                        }
                        match fs::read(entry.path()) {
                            Ok(bytes) => out.push((name.to_owned(), content_etag(&bytes))),
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    out.sort();
                    Ok(out)
                })
                .await
                .map_err(io::Error::other)?
            }
        }
    }

    /// Writes `doc` if the stored version is still `expect`; returns the new
    /// version.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when it is not; S3 or disk failures.
    pub async fn put(&self, doc: &ClusterResource, expect: &Expect) -> Result<String, StoreError> {
        let name = doc.metadata.name.clone();
        let bytes = serde_json::to_vec_pretty(doc).map_err(|e| StoreError::Corrupt {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        match self {
            StateStore::S3 {
                aws,
                bucket,
                prefix,
            } => {
                let key = format!("{prefix}{name}.json");
                let result = aws
                    .call(Service::S3, "PutObject", |_| {
                        let put = aws
                            .s3
                            .put_object()
                            .bucket(bucket)
                            .key(&key)
                            .content_type("application/json")
                            .body(ByteStream::from(bytes.clone()));
                        match expect {
                            Expect::Absent => put.if_none_match("*").send(),
                            Expect::Etag(etag) => put.if_match(etag).send(),
                        }
                    })
                    .await;
                match result {
                    Ok(out) => Ok(out.e_tag().unwrap_or_default().to_owned()),
                    Err(e) if is_precondition(&e) => Err(StoreError::Conflict { name }),
                    Err(e) => Err(e.into()),
                }
            }
            StateStore::Local { dir } => {
                let dir = dir.clone();
                let expect = expect.clone();
                tokio::task::spawn_blocking(move || {
                    let _lock = DirLock::exclusive(&dir)?;
                    let path = dir.join(format!("{name}.json"));
                    let current = match fs::read(&path) {
                        Ok(b) => Some(content_etag(&b)),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                        Err(e) => return Err(e.into()),
                    };
                    let matches = match (&expect, &current) {
                        (Expect::Absent, None) => true,
                        (Expect::Etag(want), Some(have)) => want == have,
                        _ => false,
                    };
                    if !matches {
                        return Err(StoreError::Conflict { name });
                    }
                    write_atomically(&dir, &path, &bytes)?;
                    Ok(content_etag(&bytes))
                })
                .await
                .map_err(io::Error::other)?
            }
        }
    }

    /// Deletes a cluster's document if it is still at `etag`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when it changed; S3 or disk failures.
    pub async fn delete(&self, name: &str, etag: &str) -> Result<(), StoreError> {
        match self {
            StateStore::S3 {
                aws,
                bucket,
                prefix,
            } => {
                // S3 general-purpose buckets and moto take no condition on
                // DeleteObject everywhere: check the version first. The lock
                // holder is the only deleter, so the window is only against
                // a concurrent `cluster apply` of the same name.
                match self.get(name).await? {
                    Some(s) if s.etag == etag => {}
                    None => return Ok(()),
                    Some(_) => {
                        return Err(StoreError::Conflict {
                            name: name.to_owned(),
                        });
                    }
                }
                let key = format!("{prefix}{name}.json");
                aws.call(Service::S3, "DeleteObject", |_| {
                    aws.s3.delete_object().bucket(bucket).key(&key).send()
                })
                .await?;
                Ok(())
            }
            StateStore::Local { dir } => {
                let dir = dir.clone();
                let name = name.to_owned();
                let etag = etag.to_owned();
                tokio::task::spawn_blocking(move || {
                    let _lock = DirLock::exclusive(&dir)?;
                    let path = dir.join(format!("{name}.json"));
                    match fs::read(&path) {
                        Ok(b) if content_etag(&b) == etag => {
                            fs::remove_file(&path)?;
                            File::open(&dir)?.sync_all()?;
                            Ok(())
                        }
                        Ok(_) => Err(StoreError::Conflict { name }),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                        Err(e) => Err(e.into()),
                    }
                })
                .await
                .map_err(io::Error::other)?
            }
        }
    }

    /// Where documents live, for logs.
    pub fn describe(&self) -> String {
        match self {
            StateStore::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
            StateStore::Local { dir } => dir.display().to_string(),
        }
    }
}

fn is_precondition(e: &AwsError) -> bool {
    e.is_code("PreconditionFailed")
        || e.is_code("ConditionalRequestConflict")
        || matches!(e.status, Some(412 | 409))
}

/// Writes `bytes` to `path` by a temporary file, fsync and rename, then
/// fsyncs the directory: a crash leaves the old or the new document, never
/// a torn one.
pub(crate) fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// An exclusive `flock` on `{dir}/.lock`: the local store's writes and
/// reads are serialised across processes.
pub(crate) struct DirLock {
    _lock: nix::fcntl::Flock<File>,
}

impl DirLock {
    pub(crate) fn exclusive(dir: &Path) -> io::Result<DirLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".lock"))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        Ok(DirLock { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClusterSpec, Metadata, Mode, OnFailure};

    fn doc(name: &str) -> ClusterResource {
        ClusterResource {
            api_version: crate::model::API_VERSION.into(),
            kind: crate::model::KIND.into(),
            metadata: Metadata {
                name: name.into(),
                ..Metadata::default()
            },
            spec: ClusterSpec {
                provider: "aws".into(),
                region: "us-east-1".into(),
                instance_type: "t3.small".into(),
                master_count: 1,
                mode: Mode::Developer,
                k3s_version: "v1.31.4+k3s1".into(),
                tags: Default::default(),
                stopped: false,
                on_failure: OnFailure::Keep,
            },
            status: Default::default(),
        }
    }

    #[tokio::test]
    async fn local_writes_are_conditional() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::local(dir.path(), "default").unwrap();
        let mut d = doc("a");
        let v1 = store.put(&d, &Expect::Absent).await.unwrap();
        assert!(matches!(
            store.put(&d, &Expect::Absent).await,
            Err(StoreError::Conflict { .. })
        ));
        d.metadata.generation = 2;
        let v2 = store.put(&d, &Expect::Etag(v1.clone())).await.unwrap();
        // A writer that read v1 is refused.
        assert!(matches!(
            store.put(&d, &Expect::Etag(v1.clone())).await,
            Err(StoreError::Conflict { .. })
        ));
        let got = store.get("a").await.unwrap().unwrap();
        assert_eq!(
            (got.doc.metadata.generation, got.etag.clone()),
            (2, v2.clone())
        );
        assert_eq!(store.list().await.unwrap(), [("a".to_owned(), v2.clone())]);
        assert!(matches!(
            store.delete("a", &v1).await,
            Err(StoreError::Conflict { .. })
        ));
        store.delete("a", &v2).await.unwrap();
        assert!(store.get("a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_corrupt_document_is_reported_not_guessed() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::local(dir.path(), "p").unwrap();
        fs::write(
            dir.path().join("state/p/clusters/x.json"),
            b"{\"metadata\": ",
        )
        .unwrap();
        assert!(matches!(
            store.get("x").await,
            Err(StoreError::Corrupt { .. })
        ));
    }
}
