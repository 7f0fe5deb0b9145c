-- The supervised VMs: what to run, the process that runs it, what the
-- operator wants. The same tables as migrations/sqlite, in PostgreSQL's
-- types (64-bit integers throughout: start times and unix milliseconds do
-- not fit an INTEGER).
CREATE TABLE vms (
    id            TEXT PRIMARY KEY NOT NULL,
    config        TEXT NOT NULL,           -- the VM's spec as JSON
    source        TEXT NOT NULL,           -- 'file' (SUPERVISOR_CONFIG) or 'api' (POST /vms)
    pid           BIGINT,                  -- the process, when one was started
    start_time    BIGINT,                  -- field 22 of /proc/<pid>/stat (clock ticks after boot)
    socket        TEXT NOT NULL,           -- the API socket path, expanded
    desired_state TEXT NOT NULL,           -- running | paused | stopped
    restarts      BIGINT NOT NULL DEFAULT 0,
    last_reason   TEXT,
    updated_at    BIGINT NOT NULL          -- unix milliseconds
);

-- One row per recovery attempt (and per first start).
CREATE TABLE attempts (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vm_id       TEXT NOT NULL,
    reason      TEXT NOT NULL,             -- process_dead | process_mismatch | socket_unreachable | health_check_failed | manual | initial_start | late_recovery
    started_at  BIGINT NOT NULL,           -- unix milliseconds
    ended_at    BIGINT,
    outcome     TEXT,                      -- success | failure | timeout
    exit_status TEXT,                      -- how the old process ended, when known (exit code or signal)
    error       TEXT
);

CREATE INDEX attempts_by_vm ON attempts (vm_id, id);
