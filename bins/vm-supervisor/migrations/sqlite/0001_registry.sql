-- The supervised VMs: what to run, the process that runs it, what the
-- operator wants.
CREATE TABLE vms (
    id            TEXT PRIMARY KEY NOT NULL,
    config        TEXT NOT NULL,           -- the VM's spec as JSON
    source        TEXT NOT NULL,           -- 'file' (SUPERVISOR_CONFIG) or 'api' (POST /vms)
    pid           INTEGER,                 -- the process, when one was started
    start_time    INTEGER,                 -- field 22 of /proc/<pid>/stat (clock ticks after boot)
    socket        TEXT NOT NULL,           -- the API socket path, expanded
    desired_state TEXT NOT NULL,           -- running | paused | stopped
    restarts      INTEGER NOT NULL DEFAULT 0,
    last_reason   TEXT,
    updated_at    INTEGER NOT NULL         -- unix milliseconds
);

-- One row per recovery attempt (and per first start).
CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    vm_id       TEXT NOT NULL,
    reason      TEXT NOT NULL,             -- process_dead | process_mismatch | socket_unreachable | health_check_failed | manual | initial_start | late_recovery
    started_at  INTEGER NOT NULL,          -- unix milliseconds
    ended_at    INTEGER,
    outcome     TEXT,                      -- success | failure | timeout
    exit_status TEXT,                      -- how the old process ended, when known (exit code or signal)
    error       TEXT
);

CREATE INDEX attempts_by_vm ON attempts (vm_id, id);
