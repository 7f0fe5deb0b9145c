-- One row per distinct alert event: (fingerprint, status, starts_at, ends_at).
-- Times are Unix epoch milliseconds (UTC); JSON columns hold text.
CREATE TABLE IF NOT EXISTS alert_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint   TEXT    NOT NULL,
    alertname     TEXT    NOT NULL,
    namespace     TEXT,
    severity      TEXT,
    status        TEXT    NOT NULL CHECK (status IN ('firing', 'resolved')),
    starts_at     INTEGER NOT NULL,
    ends_at       INTEGER NOT NULL,
    event_at      INTEGER NOT NULL,
    labels        TEXT    NOT NULL,
    annotations   TEXT    NOT NULL,
    generator_url TEXT,
    raw           TEXT    NOT NULL,
    received_at   INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL,
    occurrences   INTEGER NOT NULL DEFAULT 1
);

CREATE UNIQUE INDEX IF NOT EXISTS alert_events_identity
    ON alert_events (fingerprint, status, starts_at, ends_at);
CREATE INDEX IF NOT EXISTS alert_events_time ON alert_events (event_at, id);
CREATE INDEX IF NOT EXISTS alert_events_alertname ON alert_events (alertname, event_at);
CREATE INDEX IF NOT EXISTS alert_events_namespace ON alert_events (namespace, event_at);
CREATE INDEX IF NOT EXISTS alert_events_fingerprint ON alert_events (fingerprint, event_at);
CREATE INDEX IF NOT EXISTS alert_events_last_seen ON alert_events (last_seen);

-- The latest known state of each alert (one row per fingerprint).
CREATE TABLE IF NOT EXISTS alert_state (
    fingerprint TEXT    PRIMARY KEY,
    alertname   TEXT    NOT NULL,
    namespace   TEXT,
    severity    TEXT,
    status      TEXT    NOT NULL CHECK (status IN ('firing', 'resolved')),
    starts_at   INTEGER NOT NULL,
    ends_at     INTEGER NOT NULL,
    labels      TEXT    NOT NULL,
    annotations TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS alert_state_status ON alert_state (status, starts_at);
