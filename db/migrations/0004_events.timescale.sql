-- Market events (scenarios, parameter changes) in the order they happened; `record` is the whole
-- event as announced on the streams. A plain table: a few rows, no hypertable needed.
CREATE TABLE IF NOT EXISTS events (
    id      bigserial PRIMARY KEY,
    ts      bigint    NOT NULL,
    at_step bigint    NOT NULL,
    type    text      NOT NULL,
    record  jsonb     NOT NULL
);

CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
