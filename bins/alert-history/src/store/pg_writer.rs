//! PostgreSQL's group-commit dispatcher, and the connection check at
//! start-up.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool};
use tokio::sync::mpsc;

use super::durability::Durability;
use super::outbox::OutboxRouting;
use super::{Delivery, WriteJob, answer, take_group, write};
use crate::error::Error;

/// Group commits in flight at once on PostgreSQL.
pub const POSTGRES_WRITERS: usize = 8;

/// The PostgreSQL group-commit dispatcher: takes the deliveries waiting now
/// (up to [`GROUP_COMMIT_MAX`](super::GROUP_COMMIT_MAX)) and commits them in one transaction on its
/// own task, up to [`POSTGRES_WRITERS`] transactions at a time; deliveries
/// that arrive meanwhile form the next group. Fewer, larger transactions
/// cost the server far less than one per delivery (one WAL flush, one
/// statement per table and chunk). Rows are locked in key order, so
/// concurrent groups, and other instances, cannot deadlock. Ends when every
/// sender is gone.
pub(super) async fn postgres_writer(
    pool: PgPool,
    mut jobs: mpsc::Receiver<WriteJob>,
    durability: Arc<Durability>,
    outbox: Arc<OutboxRouting>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(POSTGRES_WRITERS));
    while let Some(first) = jobs.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let batch = take_group(first, &mut jobs);
        let pool = pool.clone();
        let durability = durability.clone();
        let outbox = outbox.clone();
        tokio::spawn(async move {
            let deliveries: Vec<&Delivery> = batch.iter().map(|job| &job.delivery).collect();
            let result = in_transaction!(pool, |tx| write::write_postgres(
                &mut tx,
                &deliveries,
                &outbox
            )
            .await?);
            durability.record(&result);
            answer(batch, result, "PostgreSQL");
            drop(slot);
        });
    }
}

/// How long start-up waits for PostgreSQL to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to PostgreSQL before the pool is built: its error names
/// the cause (connection refused, unknown host, authentication, missing
/// database) where the pool would only report a timeout.
pub(super) async fn check_postgres(options: &PgConnectOptions) -> Result<(), Error> {
    use sqlx::Connection;
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    );
    let reason = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        sqlx::postgres::PgConnection::connect_with(options),
    )
    .await
    {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            return Ok(());
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
    };
    Err(Error::Open { target, reason })
}
