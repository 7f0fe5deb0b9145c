-- PostgreSQL counts redeliveries in a separate narrow table and reads
-- events through a view of this name that adds them in (see its migration
-- 0005). SQLite updates the event row itself (no full-page writes there),
-- so its view is the events table as it is: the same queries run on both.
CREATE VIEW alert_events_seen AS SELECT * FROM alert_events;
