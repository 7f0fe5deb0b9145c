-- A state row repeated the labels and annotations of its event (about 500
-- of its ~600 bytes, rewritten on every change of state). The event with
-- the state's identity (fingerprint, status, starts_at, ends_at) is written
-- in the same transaction and holds the same, so reads join to it instead.
ALTER TABLE alert_state DROP COLUMN labels;
ALTER TABLE alert_state DROP COLUMN annotations;
