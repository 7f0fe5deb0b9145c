-- New entries of the GIN index on labels go to its pending list first
-- (fastupdate), and the insert that finds the list over its limit moves the
-- whole list into the index inside its own statement. At the default limit
-- (gin_pending_list_limit, 4 MB) that insert took 130-290 ms every ~5 s
-- at 6,000 alerts/s, and every delivery in its group commit waited for it.
-- A 256 kB list is moved sixteen times as often, in a sixteenth of the
-- time. (fastupdate = off, each entry straight into the index, wrote 15 %
-- more WAL and was slower.) Autovacuum also empties the list where it runs.
ALTER INDEX alert_events_labels SET (gin_pending_list_limit = 256);
