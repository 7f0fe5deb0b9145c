-- One row that readiness writes after a failed write, to learn whether
-- writes work again (a full disk, a read-only file system, a lost schema)
-- without waiting for the next delivery: 64 KiB of padding, set and
-- cleared in one transaction.
CREATE TABLE alert_history_write_probe (
    id INTEGER PRIMARY KEY,
    written_at BIGINT NOT NULL,
    padding BYTEA
);
