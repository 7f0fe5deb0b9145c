-- Two indexes cost a random index-page write on nearly every write and
-- served nothing another index does not:
-- * alert_events_fingerprint (fingerprint, event_at) repeated the leading
--   column of the unique identity index (fingerprint, status, starts_at,
--   ends_at); lookups by fingerprint use that one (an alert has few events
--   to sort).
-- * alert_events_last_seen moved on every redelivery; retention now walks
--   alert_events_time (event_at, id), since an event last delivered before
--   the cutoff happened before it too.
DROP INDEX IF EXISTS alert_events_fingerprint;
DROP INDEX IF EXISTS alert_events_last_seen;

-- Free space on every page, so that a redelivery (which changes only
-- unindexed columns: last_seen, occurrences, annotations, raw) and an
-- unchanged state row are updated in place (HOT: no new index entries).
ALTER TABLE alert_events SET (fillfactor = 85);
ALTER TABLE alert_state SET (fillfactor = 70);
