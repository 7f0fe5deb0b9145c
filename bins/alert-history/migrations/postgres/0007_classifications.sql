-- Issue 19: the LLM's latest validated classification of each alert
-- (by fingerprint). Times are Unix epoch milliseconds; recommendations
-- are a JSON array of strings.
CREATE TABLE IF NOT EXISTS alert_classifications (
    fingerprint     TEXT PRIMARY KEY NOT NULL,
    severity        TEXT NOT NULL CHECK (severity IN ('critical', 'warning', 'info', 'noise')),
    confidence      DOUBLE PRECISION NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    reasoning       TEXT NOT NULL,
    recommendations JSONB NOT NULL DEFAULT '[]'::jsonb,
    model           TEXT NOT NULL,
    classified_at   BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS alert_classifications_classified_at
    ON alert_classifications (classified_at);
