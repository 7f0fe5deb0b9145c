//! SQLite's single writer task (group commits) and the checkpointer that
//! keeps its write-ahead log bounded.

use std::sync::Arc;
use std::time::Duration;

use keel_telemetry::{CancellationToken, every};
use sqlx::sqlite::SqlitePool;
use tokio::sync::{Notify, mpsc};

use super::durability::Durability;
use super::outbox::OutboxRouting;
use super::{Delivery, WriteJob, answer, take_group, write};

/// The SQLite writer: takes the deliveries waiting now, commits them in one
/// transaction, answers each. When the checkpointer asks (`finish`), it
/// then completes the checkpoint itself (see [`sqlite_checkpointer`]).
/// Ends when every sender is gone.
///
/// A group is answered `Ok` only when its commit succeeded and the path
/// still names the database file that was opened (a write to a deleted
/// file "succeeds" and is lost at restart).
pub(super) async fn sqlite_writer(
    pool: SqlitePool,
    mut jobs: mpsc::Receiver<WriteJob>,
    finish: Arc<Notify>,
    durability: Arc<Durability>,
    outbox: Arc<OutboxRouting>,
) {
    loop {
        // The checkpoint first: under sustained load a delivery is always
        // waiting.
        let first = tokio::select! {
            biased;
            () = finish.notified() => {
                finish_checkpoint(&pool).await;
                continue;
            }
            job = jobs.recv() => match job {
                Some(job) => job,
                None => return,
            },
        };
        let batch = take_group(first, &mut jobs);
        let deliveries: Vec<&Delivery> = batch.iter().map(|job| &job.delivery).collect();
        let result = in_transaction!(pool, |tx| write::write_sqlite(
            &mut tx,
            &deliveries,
            &outbox
        )
        .await?)
        .and_then(|saved| {
            durability
                .check_file()
                .map(|()| saved)
                .map_err(|e| sqlx::Error::Io(std::io::Error::other(e.to_string())))
        });
        durability.record(&result);
        answer(batch, result, "SQLite");
    }
}

/// The writer's part of a checkpoint: between two transactions, copies the
/// frames committed since the checkpointer's pass (few: that pass copied
/// the rest), so the whole log is in the database file and the next
/// transaction starts the log over from its beginning.
async fn finish_checkpoint(pool: &SqlitePool) {
    if let Err(e) = passive_checkpoint(pool, "finished by the writer").await
        && !pool.is_closed()
    {
        tracing::warn!(error = %e, "SQLite checkpoint failed");
    }
}

/// One `PASSIVE` checkpoint on `pool`, logged at debug level with its
/// duration; returns (frames in the log, frames copied so far).
async fn passive_checkpoint(pool: &SqlitePool, what: &str) -> Result<(i64, i64), sqlx::Error> {
    let started = tokio::time::Instant::now();
    let (busy, log, copied) =
        sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(pool)
            .await?;
    tracing::debug!(
        busy,
        log,
        copied,
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "SQLite checkpoint {what}"
    );
    Ok((log, copied))
}

/// How often the SQLite checkpointer copies the write-ahead log back into
/// the database file.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// The checkpointer repeats its pass until one copies at most this many
/// new frames (or [`CHECKPOINT_PASSES`] were made) before it hands the rest
/// to the writer. The writer's share is a stall for every delivery, and
/// its cost is mostly the `fsync` of what it copies: over 60 s at 6,000
/// alerts/s, stopping at 256 frames left the writer 24 ms a round on
/// average (p99 of the webhook 52-69 ms), at 8 frames 10 ms (p99 44 ms).
const FINISH_FRAMES: i64 = 8;

/// Most checkpointer passes per round.
const CHECKPOINT_PASSES: usize = 12;

/// Checkpoints the SQLite write-ahead log every [`CHECKPOINT_INTERVAL`]
/// until the pool closes, in two steps:
///
/// 1. `PASSIVE` checkpoints from a reader connection copy the frames
///    committed so far into the database file (and `fsync` both) while the
///    writer goes on committing. A pass copies what was committed before it
///    started, so passes repeat until one has little left to copy (at most
///    [`FINISH_FRAMES`]); each is shorter than the last, since it only
///    copies what was committed during the one before;
/// 2. the writer, between two transactions, runs one more `PASSIVE`
///    checkpoint, which copies only what was committed during the last
///    pass: about 10 ms on average under sustained load, most of it
///    `fsync`, where copying the whole quarter second would stall every
///    delivery for tens of milliseconds.
///
/// Step 2 is what lets the log start over: SQLite rewinds the log only
/// when every frame in it has been copied, which a checkpoint beside a busy
/// writer never achieves (more frames have been committed by the time it
/// ends); without it the log grows without bound under sustained load
/// (1.5 GB in 15 s at 6,000 alerts/s), and every new frame lands on a
/// fresh, zero-filled page of the file. The writer has automatic
/// checkpoints turned off.
///
/// Runs on the kit's [`every`] until `stop` is cancelled (the store is
/// closed).
pub(super) async fn sqlite_checkpointer(
    read: SqlitePool,
    finish: Arc<Notify>,
    stop: CancellationToken,
) {
    every(CHECKPOINT_INTERVAL, stop, move || {
        let (read, finish) = (read.clone(), finish.clone());
        async move {
            match checkpoint_passes(&read).await {
                Ok(true) => finish.notify_one(),
                Ok(false) => {}
                Err(e) if read.is_closed() => {
                    tracing::debug!(error = %e, "SQLite checkpoint after close");
                }
                Err(e) => tracing::warn!(error = %e, "SQLite checkpoint failed"),
            }
        }
    })
    .await;
}

/// Step 1 of [`sqlite_checkpointer`]: `PASSIVE` checkpoints from `read`
/// until one copies at most [`FINISH_FRAMES`] new frames, at most
/// [`CHECKPOINT_PASSES`]. Returns whether the log holds frames (so the
/// writer has a checkpoint to finish).
pub(super) async fn checkpoint_passes(read: &SqlitePool) -> Result<bool, sqlx::Error> {
    let mut copied_before = None;
    for _ in 0..CHECKPOINT_PASSES {
        let (log, copied) = passive_checkpoint(read, "pass").await?;
        if log <= 0 {
            return Ok(false);
        }
        // A log that started over since the last pass counts from zero.
        let new = copied - copied_before.filter(|&c| c <= copied).unwrap_or(0);
        copied_before = Some(copied);
        if new <= FINISH_FRAMES {
            break;
        }
    }
    Ok(true)
}
