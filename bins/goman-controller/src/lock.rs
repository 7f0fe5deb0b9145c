//! Per-cluster locks, so several controllers are safe: goman's DynamoDB
//! lock (conditional put `attribute_not_exists(resource_id) OR expires_at <
//! :now`; renew and release conditioned on the owner's token; TTL 5 min,
//! renewed every 2 min), or, with the local store, the same protocol on
//! lock files.
//!
//! A lock alone does not make writes safe: a controller that stalls past
//! its TTL still believes it holds the lock. The reconciler therefore
//! renews (re-checks) the lock right before every state write, and the
//! write itself is conditional on the document's version, so a controller
//! that lost its lock cannot overwrite newer state (see `store`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};

use crate::aws::{Aws, AwsError, Service};
use crate::metrics::Metrics;
use crate::store::{DirLock, write_atomically};

/// A held lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockToken {
    /// `cluster/{profile}/{name}`.
    pub resource: String,
    /// A fresh uuid per acquisition: the owner token renew and release are
    /// conditioned on.
    pub owner: String,
    /// Who holds it (host/pid), for operators.
    pub holder: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// A lock failure.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock is no longer ours (expired and taken, or released).
    #[error("lock {resource} lost: another controller holds it or it expired")]
    Lost {
        /// The resource.
        resource: String,
    },
    /// DynamoDB failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The lock directory failed.
    #[error("lock directory: {0}")]
    Io(#[from] io::Error),
}

/// DynamoDB or lock files.
#[derive(Debug, Clone)]
pub struct Locks {
    backend: Backend,
    ttl: Duration,
    metrics: Metrics,
}

#[derive(Debug, Clone)]
enum Backend {
    Dynamo { aws: Aws, table: String },
    Local { dir: PathBuf },
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Serialize, Deserialize)]
struct LockFile {
    owner: String,
    holder: String,
    expires_at: u64,
}

impl Locks {
    /// Locks in DynamoDB `table`.
    pub fn dynamodb(aws: Aws, table: impl Into<String>, ttl: Duration, metrics: Metrics) -> Locks {
        Locks {
            backend: Backend::Dynamo {
                aws,
                table: table.into(),
            },
            ttl,
            metrics,
        }
    }

    /// Lock files under `{root}/locks/`.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn local(root: &Path, ttl: Duration, metrics: Metrics) -> io::Result<Locks> {
        let dir = root.join("locks");
        fs::create_dir_all(&dir)?;
        Ok(Locks {
            backend: Backend::Local { dir },
            ttl,
            metrics,
        })
    }

    /// The lock's time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the lock on `resource` for `holder`, or `None` while another
    /// owner holds an unexpired one.
    ///
    /// # Errors
    /// DynamoDB or disk failures.
    pub async fn acquire(
        &self,
        resource: &str,
        holder: &str,
    ) -> Result<Option<LockToken>, LockError> {
        let token = LockToken {
            resource: resource.to_owned(),
            owner: uuid::Uuid::new_v4().to_string(),
            holder: holder.to_owned(),
            expires_at: now() + self.ttl.as_secs().max(1),
        };
        let result = match &self.backend {
            Backend::Dynamo { aws, table } => {
                let now = now().to_string();
                let r = aws
                    .call(Service::DynamoDb, "PutItem", |_| {
                        aws.dynamodb
                            .put_item()
                            .table_name(table)
                            .item("resource_id", AttributeValue::S(token.resource.clone()))
                            .item("owner", AttributeValue::S(token.owner.clone()))
                            .item("holder", AttributeValue::S(token.holder.clone()))
                            .item(
                                "expires_at",
                                AttributeValue::N(token.expires_at.to_string()),
                            )
                            .condition_expression(
                                "attribute_not_exists(resource_id) OR expires_at < :now",
                            )
                            .expression_attribute_values(":now", AttributeValue::N(now.clone()))
                            .send()
                    })
                    .await;
                match r {
                    Ok(_) => Ok(Some(token)),
                    Err(e) if e.is_code("ConditionalCheckFailedException") => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
            Backend::Local { dir } => {
                let dir = dir.clone();
                let token = token.clone();
                tokio::task::spawn_blocking(move || {
                    let _l = DirLock::exclusive(&dir)?;
                    let path = dir.join(file_name(&token.resource));
                    if let Some(current) = read_lock(&path)?
                        && current.expires_at >= now()
                    {
                        return Ok(None);
                    }
                    write_lock(&dir, &path, &token)?;
                    Ok(Some(token))
                })
                .await
                .map_err(io::Error::other)?
            }
        };
        let busy = matches!(result, Ok(None));
        self.count("acquire", &result, busy);
        result
    }

    /// Extends the lock by its TTL, if it is still ours.
    ///
    /// # Errors
    /// [`LockError::Lost`] when it is not.
    pub async fn renew(&self, token: &LockToken) -> Result<LockToken, LockError> {
        let mut renewed = token.clone();
        renewed.expires_at = now() + self.ttl.as_secs().max(1);
        let result = match &self.backend {
            Backend::Dynamo { aws, table } => {
                let r = aws
                    .call(Service::DynamoDb, "UpdateItem", |_| {
                        aws.dynamodb
                            .update_item()
                            .table_name(table)
                            .key("resource_id", AttributeValue::S(token.resource.clone()))
                            .update_expression("SET expires_at = :exp")
                            .condition_expression("#owner = :owner")
                            .expression_attribute_names("#owner", "owner")
                            .expression_attribute_values(
                                ":exp",
                                AttributeValue::N(renewed.expires_at.to_string()),
                            )
                            .expression_attribute_values(
                                ":owner",
                                AttributeValue::S(token.owner.clone()),
                            )
                            .send()
                    })
                    .await;
                match r {
                    Ok(_) => Ok(renewed),
                    Err(e) if e.is_code("ConditionalCheckFailedException") => {
                        Err(LockError::Lost {
                            resource: token.resource.clone(),
                        })
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Backend::Local { dir } => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || {
                    let _l = DirLock::exclusive(&dir)?;
                    let path = dir.join(file_name(&renewed.resource));
                    match read_lock(&path)? {
                        Some(current) if current.owner == renewed.owner => {
                            write_lock(&dir, &path, &renewed)?;
                            Ok(renewed)
                        }
                        _ => Err(LockError::Lost {
                            resource: renewed.resource.clone(),
                        }),
                    }
                })
                .await
                .map_err(io::Error::other)?
            }
        };
        self.count("renew", &result, false);
        result
    }

    /// Gives the lock up, if it is still ours (a lost lock is not an error
    /// here: there is nothing to give up).
    ///
    /// # Errors
    /// DynamoDB or disk failures.
    pub async fn release(&self, token: &LockToken) -> Result<(), LockError> {
        let result = match &self.backend {
            Backend::Dynamo { aws, table } => {
                let r = aws
                    .call(Service::DynamoDb, "DeleteItem", |_| {
                        aws.dynamodb
                            .delete_item()
                            .table_name(table)
                            .key("resource_id", AttributeValue::S(token.resource.clone()))
                            .condition_expression("#owner = :owner")
                            .expression_attribute_names("#owner", "owner")
                            .expression_attribute_values(
                                ":owner",
                                AttributeValue::S(token.owner.clone()),
                            )
                            .send()
                    })
                    .await;
                match r {
                    Ok(_) => Ok(()),
                    Err(e) if e.is_code("ConditionalCheckFailedException") => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Backend::Local { dir } => {
                let dir = dir.clone();
                let token = token.clone();
                tokio::task::spawn_blocking(move || {
                    let _l = DirLock::exclusive(&dir)?;
                    let path = dir.join(file_name(&token.resource));
                    if let Some(current) = read_lock(&path)?
                        && current.owner == token.owner
                    {
                        fs::remove_file(&path)?;
                    }
                    Ok(())
                })
                .await
                .map_err(io::Error::other)?
            }
        };
        self.count("release", &result, false);
        result
    }

    fn count<T>(&self, operation: &'static str, result: &Result<T, LockError>, busy: bool) {
        let label = match result {
            Ok(_) if busy => "busy",
            Ok(_) => "ok",
            Err(LockError::Lost { .. }) => "lost",
            Err(_) => "error",
        };
        self.metrics.lock_op(operation, label);
    }
}

fn file_name(resource: &str) -> String {
    // Resources are `cluster/{profile}/{name}` with validated parts.
    format!("{}.json", resource.replace('/', "__"))
}

fn read_lock(path: &Path) -> io::Result<Option<LockFile>> {
    match fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_lock(dir: &Path, path: &Path, token: &LockToken) -> io::Result<()> {
    let file = LockFile {
        owner: token.owner.clone(),
        holder: token.holder.clone(),
        expires_at: token.expires_at,
    };
    write_atomically(
        dir,
        path,
        &serde_json::to_vec(&file).map_err(io::Error::other)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_locks_follow_gomans_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let locks = Locks::local(
            dir.path(),
            Duration::from_secs(300),
            Metrics::unregistered(),
        )
        .unwrap();
        let a = locks.acquire("cluster/p/a", "one").await.unwrap().unwrap();
        assert!(locks.acquire("cluster/p/a", "two").await.unwrap().is_none());
        let a = locks.renew(&a).await.unwrap();
        locks.release(&a).await.unwrap();
        let b = locks.acquire("cluster/p/a", "two").await.unwrap().unwrap();
        // The first owner's token no longer renews.
        assert!(matches!(locks.renew(&a).await, Err(LockError::Lost { .. })));
        locks.release(&a).await.unwrap();
        assert!(locks.renew(&b).await.is_ok());
    }
}
