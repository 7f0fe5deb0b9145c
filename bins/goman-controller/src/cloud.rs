//! EC2 and SSM operations, each through [`Aws`]'s pipelines.
//!
//! * Instances are created one per call with a `ClientToken` that was
//!   recorded in the state first; every retry of the create looks the token
//!   up (tag `goman:client-token`) before calling `RunInstances` again, so
//!   an accepted request whose answer was lost never creates a second
//!   instance, even against an API that ignores client tokens (moto).
//! * Start, stop, terminate and reboot go through keel-exec's
//!   `BatchExecutor`: 10 instances per call, one result per instance, a
//!   batch refused for one bad id split in halves to find it.
//! * SSM commands fan out through keel-exec's `ParallelExecutor`
//!   (concurrency 5, a per-command timeout, 10 minutes overall) and are
//!   polled with `GetCommandInvocation`.

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

use aws_sdk_ec2::types::{
    AttributeBooleanValue, Filter, HttpTokensState, IamInstanceProfileSpecification,
    InstanceMetadataOptionsRequest, InstanceType, ResourceType, Tag, TagSpecification,
};
use aws_sdk_ssm::types::{CommandInvocationStatus, ParameterType};
use chrono::{DateTime, Utc};
use keel::exec::{BatchExecutor, ParallelExecutor, SplitPolicy};
use serde::{Deserialize, Serialize};

use crate::aws::{Aws, AwsError, ErrorKind, Service};

/// Tag keys the controller owns.
pub mod tags {
    /// The cluster's name.
    pub const CLUSTER: &str = "goman:cluster";
    /// The cluster's uid (instances are found by it).
    pub const CLUSTER_UID: &str = "goman:cluster-uid";
    /// `master`.
    pub const ROLE: &str = "goman:role";
    /// The index within the role.
    pub const INDEX: &str = "goman:index";
    /// The client token of the create.
    pub const CLIENT_TOKEN: &str = "goman:client-token";
    /// The profile.
    pub const PROFILE: &str = "goman:profile";
}

/// An instance as EC2 describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ec2Instance {
    /// `i-...`.
    pub id: String,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down`,
    /// `terminated`.
    pub state: String,
    /// Private IPv4.
    pub private_ip: Option<String>,
    /// Public IPv4.
    pub public_ip: Option<String>,
    /// The `goman:client-token` tag.
    pub client_token: Option<String>,
    /// When EC2 launched it.
    pub launched_at: Option<DateTime<Utc>>,
}

impl Ec2Instance {
    fn from_sdk(i: &aws_sdk_ec2::types::Instance) -> Ec2Instance {
        let tag = |key: &str| {
            i.tags()
                .iter()
                .find(|t| t.key() == Some(key))
                .and_then(|t| t.value())
                .map(str::to_owned)
        };
        Ec2Instance {
            id: i.instance_id().unwrap_or_default().to_owned(),
            state: i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_owned())
                .unwrap_or_else(|| "unknown".to_owned()),
            private_ip: i.private_ip_address().map(str::to_owned),
            public_ip: i.public_ip_address().map(str::to_owned),
            client_token: tag(tags::CLIENT_TOKEN),
            launched_at: i
                .launch_time()
                .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())),
        }
    }

    /// Not terminated or on its way there.
    pub fn is_live(&self) -> bool {
        !matches!(self.state.as_str(), "shutting-down" | "terminated")
    }
}

/// What `RunInstances` needs besides the token.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The AMI.
    pub image_id: String,
    /// The instance type.
    pub instance_type: String,
    /// An instance profile name for the node role (SSM agent, the token
    /// parameter), if any.
    pub instance_profile: Option<String>,
    /// Subnet, if not the default VPC's.
    pub subnet_id: Option<String>,
    /// Every tag, the controller's included.
    pub tags: BTreeMap<String, String>,
    /// User data (plain text; encoded here). Holds no secret: the join
    /// token stays in Parameter Store.
    pub user_data: String,
}

/// The four batch operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOp {
    /// `StartInstances`.
    Start,
    /// `StopInstances`.
    Stop,
    /// `TerminateInstances`.
    Terminate,
    /// `RebootInstances`.
    Reboot,
}

impl BatchOp {
    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            BatchOp::Start => "start",
            BatchOp::Stop => "stop",
            BatchOp::Terminate => "terminate",
            BatchOp::Reboot => "reboot",
        }
    }

    const fn operation(self) -> &'static str {
        match self {
            BatchOp::Start => "StartInstances",
            BatchOp::Stop => "StopInstances",
            BatchOp::Terminate => "TerminateInstances",
            BatchOp::Reboot => "RebootInstances",
        }
    }
}

/// What one SSM command ended with on one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandOutput {
    /// SSM's final status (`Success`, `Failed`, `TimedOut`, ...).
    pub status: String,
    /// The script's exit code (-1 when none).
    pub exit_code: i32,
    /// Standard output (SSM keeps the first 24,000 characters).
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// SSM and EC2 settings of the fan-outs.
#[derive(Debug, Clone)]
pub struct CloudSettings {
    /// Commands at once (5).
    pub ssm_concurrency: usize,
    /// One command's limit (5 min for an install).
    pub command_timeout: Duration,
    /// A fan-out's limit (10 min).
    pub fanout_timeout: Duration,
    /// How often a command is polled (2 s; tests use less).
    pub poll_interval: Duration,
    /// Instances per batch call (10).
    pub batch_size: usize,
}

impl Default for CloudSettings {
    fn default() -> Self {
        CloudSettings {
            ssm_concurrency: 5,
            command_timeout: Duration::from_secs(300),
            fanout_timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(2),
            batch_size: 10,
        }
    }
}

/// EC2 and SSM through the pipelines.
#[derive(Debug, Clone)]
pub struct Cloud {
    aws: Aws,
    settings: CloudSettings,
}

impl Cloud {
    /// Wraps the clients.
    pub fn new(aws: Aws, settings: CloudSettings) -> Cloud {
        Cloud { aws, settings }
    }

    /// The clients.
    pub fn aws(&self) -> &Aws {
        &self.aws
    }

    /// The settings.
    pub fn settings(&self) -> &CloudSettings {
        &self.settings
    }

    /// Every instance tagged with `filter_key = value`, terminated ones
    /// excepted.
    ///
    /// # Errors
    /// EC2's.
    pub async fn find_tagged(&self, key: &str, value: &str) -> Result<Vec<Ec2Instance>, AwsError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .aws
                .call(Service::Ec2, "DescribeInstances", |_| {
                    self.aws
                        .ec2
                        .describe_instances()
                        .filters(
                            Filter::builder()
                                .name(format!("tag:{key}"))
                                .values(value)
                                .build(),
                        )
                        .filters(
                            Filter::builder()
                                .name("instance-state-name")
                                .set_values(Some(
                                    ["pending", "running", "stopping", "stopped", "shutting-down"]
                                        .map(String::from)
                                        .to_vec(),
                                ))
                                .build(),
                        )
                        .set_next_token(token.clone())
                        .send()
                })
                .await?;
            for r in page.reservations() {
                out.extend(r.instances().iter().map(Ec2Instance::from_sdk));
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn find_by_token(
        &self,
        token: &str,
        attempt: u32,
    ) -> Result<Option<Ec2Instance>, AwsError> {
        let out = self
            .aws
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name(format!("tag:{}", tags::CLIENT_TOKEN))
                    .values(token)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.aws.classify(Service::Ec2, "RunInstances", attempt, &e))?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(Ec2Instance::from_sdk)
            .find(Ec2Instance::is_live))
    }

    /// Creates one instance with `client_token`, or returns the one that
    /// token already created. Every attempt after the first looks the token
    /// up before calling `RunInstances` again.
    ///
    /// # Errors
    /// EC2's, classified.
    pub async fn create_instance(
        &self,
        client_token: &str,
        launch: &Launch,
    ) -> Result<Ec2Instance, AwsError> {
        let created = self
            .aws
            .call_op(Service::Ec2, "RunInstances", |attempt| async move {
                if attempt > 1
                    && let Some(found) = self.find_by_token(client_token, attempt).await?
                {
                    tracing::info!(token = client_token, instance = %found.id, "an earlier RunInstances attempt had created the instance");
                    return Ok((found, false));
                }
                let tags: Vec<Tag> = launch
                    .tags
                    .iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect();
                let mut run = self
                    .aws
                    .ec2
                    .run_instances()
                    .client_token(client_token)
                    .image_id(&launch.image_id)
                    .instance_type(InstanceType::from(launch.instance_type.as_str()))
                    .min_count(1)
                    .max_count(1)
                    .disable_api_termination(true)
                    .metadata_options(
                        InstanceMetadataOptionsRequest::builder()
                            .http_tokens(HttpTokensState::Required)
                            .build(),
                    )
                    .user_data(base64(launch.user_data.as_bytes()))
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::Instance)
                            .set_tags(Some(tags.clone()))
                            .build(),
                    )
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::Volume)
                            .set_tags(Some(tags))
                            .build(),
                    );
                if let Some(profile) = &launch.instance_profile {
                    run = run.iam_instance_profile(IamInstanceProfileSpecification::builder().name(profile).build());
                }
                if let Some(subnet) = &launch.subnet_id {
                    run = run.subnet_id(subnet);
                }
                let out = run
                    .send()
                    .await
                    .map_err(|e| self.aws.classify(Service::Ec2, "RunInstances", attempt, &e))?;
                let instance = out
                    .instances()
                    .first()
                    .map(Ec2Instance::from_sdk)
                    .ok_or_else(|| AwsError::invalid(Service::Ec2, "RunInstances", "the answer holds no instance"))?;
                Ok((instance, true))
            })
            .await?;
        if created.1 {
            self.aws.metrics().instance_created();
        }
        Ok(created.0)
    }

    /// Sets or clears termination protection.
    ///
    /// # Errors
    /// EC2's.
    pub async fn set_termination_protection(
        &self,
        instance_id: &str,
        on: bool,
    ) -> Result<(), AwsError> {
        self.aws
            .call(Service::Ec2, "ModifyInstanceAttribute", |_| {
                self.aws
                    .ec2
                    .modify_instance_attribute()
                    .instance_id(instance_id)
                    .disable_api_termination(AttributeBooleanValue::builder().value(on).build())
                    .send()
            })
            .await
            .map(drop)
    }

    /// Whether termination protection is on.
    ///
    /// # Errors
    /// EC2's.
    pub async fn termination_protection(&self, instance_id: &str) -> Result<bool, AwsError> {
        let out = self
            .aws
            .call(Service::Ec2, "DescribeInstanceAttribute", |_| {
                self.aws
                    .ec2
                    .describe_instance_attribute()
                    .instance_id(instance_id)
                    .attribute(aws_sdk_ec2::types::InstanceAttributeName::DisableApiTermination)
                    .send()
            })
            .await?;
        Ok(out
            .disable_api_termination()
            .and_then(|a| a.value())
            .unwrap_or(false))
    }

    /// Runs `op` on `ids`, `batch_size` per call; one result per id, in
    /// order. A batch refused as a whole for a non-retryable reason (an
    /// unknown id) is split in halves until the bad ids are alone.
    pub async fn batch(&self, op: BatchOp, ids: &[String]) -> Vec<Result<(), String>> {
        if ids.is_empty() {
            return Vec::new();
        }
        let executor = BatchExecutor::builder()
            .batch_size(self.settings.batch_size)
            .split(SplitPolicy::NonRetryable)
            .build()
            .expect("a positive batch size");
        let classify = |r: &Result<Vec<(String, String)>, AwsError>| match r {
            Ok(_) => keel::Outcome::Success,
            Err(e) if e.kind == ErrorKind::Permanent => keel::Outcome::Neutral,
            Err(_) => keel::Outcome::Failure,
        };
        let report = executor
            .run_classified(
                ids.iter().cloned(),
                classify,
                |batch| {
                    let ids = batch.to_vec();
                    async move {
                        self.aws.metrics().batch_call(op.as_str());
                        self.batch_call(op, ids).await
                    }
                },
                |id: &String, states: &Vec<(String, String)>| {
                    if op == BatchOp::Reboot || states.iter().any(|(i, _)| i == id) {
                        Ok(())
                    } else {
                        Err(AwsError::invalid(
                            Service::Ec2,
                            op.operation(),
                            format!("{id} missing from the answer"),
                        ))
                    }
                },
            )
            .await;
        let ok = report.errors().count() == 0;
        let took = report.wall_time();
        self.aws.metrics().operation(
            &format!("Batch.{}", op.operation()),
            took,
            ok,
            ids.len() as u64,
        );
        tracing::info!(
            target: "goman::batch",
            operation = op.operation(),
            succeeded = report.succeeded(),
            failed = report.failed(),
            duration_ms = took.as_millis() as u64,
            "[BATCH] batch operation finished"
        );
        report
            .into_results()
            .into_iter()
            .map(|r| r.map(drop).map_err(|e| e.to_string()))
            .collect()
    }

    async fn batch_call(
        &self,
        op: BatchOp,
        ids: Vec<String>,
    ) -> Result<Vec<(String, String)>, AwsError> {
        let ec2 = &self.aws.ec2;
        let ids = Some(ids);
        match op {
            BatchOp::Start => {
                let out = self
                    .aws
                    .call(Service::Ec2, op.operation(), |_| {
                        ec2.start_instances().set_instance_ids(ids.clone()).send()
                    })
                    .await?;
                Ok(state_changes(out.starting_instances()))
            }
            BatchOp::Stop => {
                let out = self
                    .aws
                    .call(Service::Ec2, op.operation(), |_| {
                        ec2.stop_instances().set_instance_ids(ids.clone()).send()
                    })
                    .await?;
                Ok(state_changes(out.stopping_instances()))
            }
            BatchOp::Terminate => {
                let out = self
                    .aws
                    .call(Service::Ec2, op.operation(), |_| {
                        ec2.terminate_instances()
                            .set_instance_ids(ids.clone())
                            .send()
                    })
                    .await?;
                Ok(state_changes(out.terminating_instances()))
            }
            BatchOp::Reboot => {
                self.aws
                    .call(Service::Ec2, op.operation(), |_| {
                        ec2.reboot_instances().set_instance_ids(ids.clone()).send()
                    })
                    .await?;
                Ok(Vec::new())
            }
        }
    }

    /// Runs `script` on one instance and waits for its end (polling
    /// `GetCommandInvocation`), bounded by the command timeout.
    ///
    /// # Errors
    /// SSM's; a command that does not end in time is `TimedOut` output,
    /// not an error.
    pub async fn run_command(
        &self,
        instance_id: &str,
        comment: &str,
        script: &[String],
    ) -> Result<CommandOutput, AwsError> {
        let timeout_secs = self.settings.command_timeout.as_secs().clamp(30, 172_800) as i32;
        let sent = self
            .aws
            .call(Service::Ssm, "SendCommand", |_| {
                self.aws
                    .ssm
                    .send_command()
                    .instance_ids(instance_id)
                    .document_name("AWS-RunShellScript")
                    .comment(comment)
                    .timeout_seconds(timeout_secs)
                    .parameters("commands", script.to_vec())
                    .send()
            })
            .await?;
        let command_id = sent
            .command()
            .and_then(|c| c.command_id())
            .ok_or_else(|| {
                AwsError::invalid(
                    Service::Ssm,
                    "SendCommand",
                    "the answer holds no command id",
                )
            })?
            .to_owned();
        let deadline = Instant::now() + self.settings.command_timeout;
        loop {
            tokio::time::sleep(self.settings.poll_interval).await;
            let result = self
                .aws
                .call(Service::Ssm, "GetCommandInvocation", |_| {
                    self.aws
                        .ssm
                        .get_command_invocation()
                        .command_id(&command_id)
                        .instance_id(instance_id)
                        .send()
                })
                .await;
            match result {
                Ok(inv) => {
                    let status = inv
                        .status()
                        .cloned()
                        .unwrap_or(CommandInvocationStatus::Pending);
                    let finished = !matches!(
                        status,
                        CommandInvocationStatus::Pending
                            | CommandInvocationStatus::InProgress
                            | CommandInvocationStatus::Delayed
                            | CommandInvocationStatus::Cancelling
                    );
                    if finished {
                        return Ok(CommandOutput {
                            status: status.as_str().to_owned(),
                            exit_code: inv.response_code(),
                            stdout: inv.standard_output_content().unwrap_or_default().to_owned(),
                            stderr: inv.standard_error_content().unwrap_or_default().to_owned(),
                        });
                    }
                }
                // Real SSM answers this for a short while after SendCommand.
                Err(e) if e.is_code("InvocationDoesNotExist") => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Ok(CommandOutput {
                    status: "TimedOut".to_owned(),
                    exit_code: -1,
                    stdout: String::new(),
                    stderr: format!("no result within {:?}", self.settings.command_timeout),
                });
            }
        }
    }

    /// Runs a script per instance (`scripts`: instance id → lines), at most
    /// `ssm_concurrency` at once, each bounded by the command timeout and
    /// all by the fan-out timeout. One result per instance, in input order.
    pub async fn fan_out(
        &self,
        kind: &'static str,
        scripts: Vec<(String, Vec<String>)>,
    ) -> Vec<(String, Result<CommandOutput, String>)> {
        let started = Instant::now();
        let executor = ParallelExecutor::builder()
            .concurrency(self.settings.ssm_concurrency)
            .item_timeout(self.settings.command_timeout + self.settings.poll_interval * 2)
            .overall_timeout(self.settings.fanout_timeout)
            .build()
            .expect("positive concurrency and timeouts");
        let ids: Vec<String> = scripts.iter().map(|(id, _)| id.clone()).collect();
        let report = executor
            .run(scripts, |(id, script)| async move {
                let comment = format!("goman {kind}");
                self.run_command(&id, &comment, &script).await
            })
            .await;
        let metrics = self.aws.metrics();
        let results: Vec<(String, Result<CommandOutput, String>)> = ids
            .into_iter()
            .zip(report.into_results())
            .map(|(id, r)| {
                let r = r.map_err(|e| e.to_string());
                let status = match &r {
                    Ok(out) => out.status.clone(),
                    Err(_) => "Error".to_owned(),
                };
                metrics.ssm_command(kind, &status);
                (id, r)
            })
            .collect();
        let ok = results
            .iter()
            .all(|(_, r)| matches!(r, Ok(o) if o.status == "Success"));
        let took = started.elapsed();
        metrics.ssm_fanout(kind, took, results.len(), ok);
        tracing::info!(
            target: "goman::parallel",
            kind,
            nodes = results.len(),
            ok,
            duration_ms = took.as_millis() as u64,
            "[PARALLEL] SSM fan-out finished"
        );
        results
    }

    /// Stores the K3s join token (SecureString) unless one exists.
    ///
    /// # Errors
    /// SSM's.
    pub async fn put_secret(&self, name: &str, value: &str) -> Result<(), AwsError> {
        let r = self
            .aws
            .call(Service::Ssm, "PutParameter", |_| {
                self.aws
                    .ssm
                    .put_parameter()
                    .name(name)
                    .value(value)
                    .r#type(ParameterType::SecureString)
                    .overwrite(false)
                    .send()
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.is_code("ParameterAlreadyExists") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether the parameter exists.
    ///
    /// # Errors
    /// SSM's.
    pub async fn has_parameter(&self, name: &str) -> Result<bool, AwsError> {
        let r = self
            .aws
            .call(Service::Ssm, "GetParameter", |_| {
                self.aws.ssm.get_parameter().name(name).send()
            })
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.is_code("ParameterNotFound") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes a parameter (absent is fine).
    ///
    /// # Errors
    /// SSM's.
    pub async fn delete_parameter(&self, name: &str) -> Result<(), AwsError> {
        let r = self
            .aws
            .call(Service::Ssm, "DeleteParameter", |_| {
                self.aws.ssm.delete_parameter().name(name).send()
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.is_code("ParameterNotFound") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn state_changes(changes: &[aws_sdk_ec2::types::InstanceStateChange]) -> Vec<(String, String)> {
    changes
        .iter()
        .map(|c| {
            (
                c.instance_id().unwrap_or_default().to_owned(),
                c.current_state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// Standard base64 (RFC 4648, padded): EC2's user data encoding. Hand
/// written: eleven lines instead of a dependency.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = u32::from(chunk[0]) << 16
            | u32::from(*chunk.get(1).unwrap_or(&0)) << 8
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }
}
