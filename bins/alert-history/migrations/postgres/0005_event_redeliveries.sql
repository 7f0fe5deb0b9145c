-- A redelivery of a stored event (Alertmanager resends every firing alert
-- of a group at each group_interval) used to update the event's row for
-- its last_seen and occurrences. The row is usually on a page written
-- minutes before, so each redelivery locked and rewrote a tuple there,
-- left a dead version to prune, and after every checkpoint the first
-- change of that page logged the whole 8 kB page: at 6,000 alerts/s a
-- fifth of all WAL. Redeliveries now count into this narrow table
-- instead (one row per redelivered event, ~130 per page); the event row is
-- rewritten only when the delivered alert itself changed (annotations,
-- generatorURL, unknown fields).
--
-- The event row keeps an FNV-1a 64 hash of the alert as last written
-- (`content_hash`): a redelivery with the same hash is the same alert, so
-- its row is not touched and its JSON not even parsed. Rows written before
-- have none and are rewritten once, at their next redelivery.
ALTER TABLE alert_events ADD COLUMN content_hash BIGINT;

-- `last_seen` is the latest redelivery, `occurrences` the redeliveries not
-- counted in the event row. No foreign key: checking one would lock the
-- event row, which is what this table avoids; retention deletes both.
CREATE TABLE IF NOT EXISTS alert_event_redeliveries (
    id          BIGINT PRIMARY KEY,
    last_seen   BIGINT NOT NULL,
    occurrences BIGINT NOT NULL
);

-- Events with their redeliveries counted in: what every read of
-- last_seen or occurrences uses (SQLite's view of the same name is the
-- events table itself).
CREATE VIEW alert_events_seen AS
SELECT e.id, e.fingerprint, e.alertname, e.namespace, e.severity, e.status,
       e.starts_at, e.ends_at, e.event_at, e.labels, e.annotations, e.generator_url,
       e.raw, e.received_at,
       GREATEST(e.last_seen, r.last_seen) AS last_seen,
       e.occurrences + COALESCE(r.occurrences, 0) AS occurrences
FROM alert_events e LEFT JOIN alert_event_redeliveries r ON r.id = e.id;
