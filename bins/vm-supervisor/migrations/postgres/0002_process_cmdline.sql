-- The command line the recorded process was started (or adopted) with, as
-- a JSON array: adoption after a restart compares it with /proc/<pid>/cmdline
-- (pid, start time and command line must all match). NULL for rows written
-- before this column: those are adopted on pid and start time alone.
ALTER TABLE vms ADD COLUMN cmdline TEXT;
