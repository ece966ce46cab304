-- Market events (scenarios, parameter changes) in the order they happened; `record` is the whole
-- event as announced on the streams. Written in the transaction of the ticks they precede. One file
-- for both flavours: a plain table (a few rows, no hypertable needed). Databases that applied the
-- earlier per-flavour copies of it have version 4 recorded and skip this.
CREATE TABLE IF NOT EXISTS events (
    id      bigserial PRIMARY KEY,
    ts      bigint    NOT NULL,
    at_step bigint    NOT NULL,
    type    text      NOT NULL,
    record  jsonb     NOT NULL
);

CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
