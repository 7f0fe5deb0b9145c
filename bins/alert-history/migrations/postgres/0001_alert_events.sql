-- One row per distinct alert event: (fingerprint, status, starts_at, ends_at).
-- Times are Unix epoch milliseconds (UTC).
CREATE TABLE IF NOT EXISTS alert_events (
    id            BIGSERIAL PRIMARY KEY,
    fingerprint   TEXT   NOT NULL,
    alertname     TEXT   NOT NULL,
    namespace     TEXT,
    severity      TEXT,
    status        TEXT   NOT NULL CHECK (status IN ('firing', 'resolved')),
    starts_at     BIGINT NOT NULL,
    ends_at       BIGINT NOT NULL,
    event_at      BIGINT NOT NULL,
    labels        JSONB  NOT NULL,
    annotations   JSONB  NOT NULL,
    generator_url TEXT,
    raw           JSONB  NOT NULL,
    received_at   BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL,
    occurrences   BIGINT NOT NULL DEFAULT 1
);

CREATE UNIQUE INDEX IF NOT EXISTS alert_events_identity
    ON alert_events (fingerprint, status, starts_at, ends_at);
CREATE INDEX IF NOT EXISTS alert_events_time ON alert_events (event_at, id);
CREATE INDEX IF NOT EXISTS alert_events_alertname ON alert_events (alertname, event_at);
CREATE INDEX IF NOT EXISTS alert_events_namespace ON alert_events (namespace, event_at);
CREATE INDEX IF NOT EXISTS alert_events_fingerprint ON alert_events (fingerprint, event_at);
CREATE INDEX IF NOT EXISTS alert_events_last_seen ON alert_events (last_seen);
CREATE INDEX IF NOT EXISTS alert_events_labels ON alert_events USING GIN (labels jsonb_path_ops);

-- The latest known state of each alert (one row per fingerprint).
CREATE TABLE IF NOT EXISTS alert_state (
    fingerprint TEXT   PRIMARY KEY,
    alertname   TEXT   NOT NULL,
    namespace   TEXT,
    severity    TEXT,
    status      TEXT   NOT NULL CHECK (status IN ('firing', 'resolved')),
    starts_at   BIGINT NOT NULL,
    ends_at     BIGINT NOT NULL,
    labels      JSONB  NOT NULL,
    annotations JSONB  NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS alert_state_status ON alert_state (status, starts_at);
