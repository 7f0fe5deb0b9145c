-- Filter rules (issue 19): evaluated in (priority, name) order, the first
-- enabled rule that matches decides. `conditions` is the rule's conditions
-- object as JSON text (validated by the service before it is stored).
-- Times are Unix epoch milliseconds.
CREATE TABLE filter_rules (
    name          TEXT    PRIMARY KEY,
    target        TEXT    NOT NULL,
    action        TEXT    NOT NULL CHECK (action IN ('allow', 'deny', 'delay')),
    delay_seconds BIGINT,
    priority      BIGINT  NOT NULL,
    enabled       BOOLEAN NOT NULL,
    conditions    TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);

-- Acknowledgements: one per alert, covering the firing episode that
-- started at `starts_at`; removed by the alert's resolve or by DELETE.
CREATE TABLE alert_acks (
    fingerprint TEXT   PRIMARY KEY,
    acked_by    TEXT   NOT NULL,
    reason      TEXT   NOT NULL,
    acked_at    BIGINT NOT NULL,
    starts_at   BIGINT NOT NULL
);

-- One row of counters bumped in the transaction of every change to the
-- rules or the acknowledgements: each replica polls it (one row read) and
-- reloads what changed.
CREATE TABLE filter_versions (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    rules BIGINT  NOT NULL,
    acks  BIGINT  NOT NULL
);
INSERT INTO filter_versions (id, rules, acks) VALUES (1, 0, 0);

-- Alertmanager 0.33+ says why it sent a notification (top-level
-- `notification_reason` of the webhook payload); kept with each event as
-- the delivery that first stored it said.
ALTER TABLE alert_events ADD COLUMN notification_reason TEXT;
