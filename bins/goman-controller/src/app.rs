//! Assembly: from the configuration to a reconciler, and the commands.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use keel::breaker::BreakerRegistry;
use keel::tx::{FileJournal, Journal};

use crate::aws::{Aws, AwsError, AwsSettings, Service, ThrottleBackoff};
use crate::cloud::{Cloud, CloudSettings};
use crate::config::{Config, JournalLocation};
use crate::lock::Locks;
use crate::metrics::Metrics;
use crate::reconcile::{ReconcileSettings, Reconciler, Requeues};
use crate::store::StateStore;

/// A start-up failure.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// An invalid setting (exit 64).
    #[error(transparent)]
    Config(#[from] keel::ConfigError),
    /// The state store.
    #[error("state store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The journal.
    #[error("journal: {0}")]
    Tx(#[from] keel::tx::TxError),
    /// AWS.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// Local files.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The AWS settings a configuration gives.
pub fn aws_settings(config: &Config) -> AwsSettings {
    let mut s = AwsSettings::new(config.region.clone());
    s.endpoint = config.endpoint.clone();
    s.retries = config.retry_max_retries;
    s.retry_base = config.retry_base_delay;
    s.throttle = ThrottleBackoff {
        base: config.throttle_base_delay,
        max: config.throttle_base_delay * 20,
    };
    s.attempt_timeout = config.aws_attempt_timeout;
    s
}

/// The reconciler's settings a configuration gives.
pub fn reconcile_settings(config: &Config) -> ReconcileSettings {
    let mut s = ReconcileSettings::new(config.profile.clone(), config.ami.clone());
    s.instance_profile = config.instance_profile.clone();
    s.subnet_id = config.subnet.clone();
    s.node_startup_timeout = config.node_startup_timeout;
    s.reconcile_timeout = config.reconcile_timeout;
    s.ready_poll = config.poll_interval.max(Duration::from_millis(10)) * 5;
    let d = Requeues::default();
    let scale = |x: Duration| x.mul_f64(config.requeue_scale);
    s.requeues = Requeues {
        pending: scale(d.pending),
        provisioning: scale(d.provisioning),
        running: scale(d.running),
        deleting: scale(d.deleting),
        failed: scale(d.failed),
        busy: scale(d.busy),
    };
    s
}

/// What a running controller is made of.
#[derive(Debug, Clone)]
pub struct Parts {
    /// The reconciler.
    pub reconciler: Reconciler,
    /// The breakers (AWS presets).
    pub breakers: BreakerRegistry,
    /// The clients.
    pub aws: Aws,
}

/// The state store a configuration names (connecting to AWS if needed).
///
/// # Errors
/// [`AppError`].
pub async fn store(config: &Config, aws: &Aws) -> Result<StateStore, AppError> {
    Ok(match &config.state_bucket {
        Some(bucket) => StateStore::s3(aws.clone(), bucket, &config.profile),
        None => StateStore::local(&config.state_dir, &config.profile)?,
    })
}

/// Connects the clients (nothing is called yet).
///
/// # Errors
/// [`AppError`].
pub async fn connect(
    config: &Config,
    metrics: Metrics,
) -> Result<(Aws, BreakerRegistry), AppError> {
    connect_with(&aws_settings(config), metrics).await
}

/// Connects with explicit AWS settings (tests give static credentials).
///
/// # Errors
/// [`AppError`].
pub async fn connect_with(
    settings: &AwsSettings,
    metrics: Metrics,
) -> Result<(Aws, BreakerRegistry), AppError> {
    connect_with_breakers(settings, BreakerRegistry::with_aws_presets(), metrics).await
}

/// Connects with explicit AWS settings and breakers (tests shorten the
/// presets' open times).
///
/// # Errors
/// [`AppError`].
pub async fn connect_with_breakers(
    settings: &AwsSettings,
    breakers: BreakerRegistry,
    metrics: Metrics,
) -> Result<(Aws, BreakerRegistry), AppError> {
    // goman's `[CIRCUIT]` lines, as structured events.
    breakers.add_listener(|event: &keel::breaker::BreakerEvent<'_>| {
        if let keel::breaker::BreakerEvent::StateTransition {
            breaker,
            from,
            to,
            reason,
            open_for,
        } = event
        {
            tracing::warn!(
                target: "goman::circuit",
                breaker = *breaker,
                from = ?from,
                to = ?to,
                reason = ?reason,
                open_for_ms = open_for.map(|d| d.as_millis() as u64),
                "[CIRCUIT] breaker changed state"
            );
        }
    });
    let aws = Aws::connect(settings, &breakers, metrics).await?;
    Ok((aws, breakers))
}

/// Builds the reconciler.
///
/// # Errors
/// [`AppError`].
pub async fn build(config: &Config, metrics: Metrics) -> Result<Parts, AppError> {
    build_with(config, &aws_settings(config), metrics).await
}

/// [`build`] with explicit AWS settings.
///
/// # Errors
/// [`AppError`].
pub async fn build_with(
    config: &Config,
    aws_settings: &AwsSettings,
    metrics: Metrics,
) -> Result<Parts, AppError> {
    build_with_breakers(
        config,
        aws_settings,
        BreakerRegistry::with_aws_presets(),
        metrics,
    )
    .await
}

/// [`build_with`] over `breakers`.
///
/// # Errors
/// [`AppError`].
pub async fn build_with_breakers(
    config: &Config,
    aws_settings: &AwsSettings,
    breakers: BreakerRegistry,
    metrics: Metrics,
) -> Result<Parts, AppError> {
    let (aws, breakers) = connect_with_breakers(aws_settings, breakers, metrics.clone()).await?;
    let store = store(config, &aws).await?;
    let locks = match &config.state_bucket {
        Some(_) => Locks::dynamodb(
            aws.clone(),
            &config.lock_table,
            config.lock_ttl,
            metrics.clone(),
        ),
        None => Locks::local(&config.state_dir, config.lock_ttl, metrics.clone())?,
    };
    let journal: Arc<dyn Journal> = match config.journal_location() {
        JournalLocation::Dir(dir) => {
            std::fs::create_dir_all(&dir)?;
            Arc::new(FileJournal::open(dir)?)
        }
        JournalLocation::Postgres(url) => Arc::new(keel::tx::PostgresJournal::connect(url).await?),
    };
    let cloud = Cloud::new(
        aws.clone(),
        CloudSettings {
            ssm_concurrency: config.ssm_concurrency,
            command_timeout: config.command_timeout,
            fanout_timeout: config.parallel_timeout,
            poll_interval: config.poll_interval,
            batch_size: 10,
        },
    );
    let reconciler = Reconciler::new(
        store,
        locks,
        cloud,
        journal,
        reconcile_settings(config),
        metrics,
    )
    .await?;
    Ok(Parts {
        reconciler,
        breakers,
        aws,
    })
}

/// `init`: creates the state bucket and the lock table if missing.
///
/// # Errors
/// AWS errors other than "already exists".
pub async fn init(aws: &Aws, bucket: &str, table: &str) -> Result<(), AwsError> {
    let r = aws
        .call(Service::S3, "CreateBucket", |_| {
            aws.s3.create_bucket().bucket(bucket).send()
        })
        .await;
    match r {
        Ok(_) => tracing::info!(bucket, "state bucket created"),
        Err(e) if e.is_code("BucketAlreadyOwnedByYou") || e.is_code("BucketAlreadyExists") => {}
        Err(e) => return Err(e),
    }
    let r = aws
        .call(Service::DynamoDb, "CreateTable", |_| {
            aws.dynamodb
                .create_table()
                .table_name(table)
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name("resource_id")
                        .key_type(KeyType::Hash)
                        .build()
                        .expect("complete key schema"),
                )
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name("resource_id")
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .expect("complete attribute definition"),
                )
                .billing_mode(BillingMode::PayPerRequest)
                .send()
        })
        .await;
    match r {
        Ok(_) => tracing::info!(table, "lock table created"),
        Err(e) if e.is_code("ResourceInUseException") => {}
        Err(e) => return Err(e),
    }
    Ok(())
}
