-- The outbox (issue 19): one row per (new event, target that should get
-- it), written in the transaction that stores the event, so a 2xx from
-- /webhook means its publishing is as durable as the event. The publisher
-- leases due rows (lease_owner, lease_until), publishes them, and deletes
-- each row in the transaction that records its outcome in
-- publish_history. A replica that dies leaves its leases to expire.
CREATE TABLE IF NOT EXISTS publish_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        INTEGER NOT NULL,
    target          TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    delayed_until   INTEGER,
    lease_owner     TEXT,
    lease_until     INTEGER,
    last_error      TEXT
);
-- A claim walks one target's rows in id order and stops after its LIMIT:
-- the rows it skips (leased or held by a delay) are at most a batch or a
-- few, however long the backlog. (An index on next_attempt_at would make
-- every claim sort the whole backlog.)
CREATE INDEX IF NOT EXISTS publish_outbox_target ON publish_outbox (target, id);
-- Lease renewal: the rows one replica holds.
CREATE INDEX IF NOT EXISTS publish_outbox_owner ON publish_outbox (lease_owner)
    WHERE lease_owner IS NOT NULL;
-- No index on event_id: each would cost every ingest's outbox insert;
-- /webhook/proxy finds its rows by id range (rows written since it began).

-- One row per publishing attempt's outcome.
CREATE TABLE IF NOT EXISTS publish_history (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      INTEGER NOT NULL,
    fingerprint   TEXT    NOT NULL,
    target        TEXT    NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('success', 'failure', 'filtered', 'retry')),
    attempt       INTEGER NOT NULL,
    response_code INTEGER,
    latency_ms    INTEGER,
    detail        TEXT,
    at            INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS publish_history_event ON publish_history (event_id);
CREATE INDEX IF NOT EXISTS publish_history_fingerprint ON publish_history (fingerprint, at);
CREATE INDEX IF NOT EXISTS publish_history_at ON publish_history (at);
