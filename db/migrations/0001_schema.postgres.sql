-- Ticks on plain PostgreSQL: native range partitioning by day on ts (nanoseconds since the epoch, as
-- in the API, so a tick round-trips exactly and candles bucket with integer arithmetic).
-- Partitions are created ahead by the writer; the DEFAULT partition catches anything else.
CREATE TABLE IF NOT EXISTS ticks (
    gseq   bigint           NOT NULL,
    symbol text             NOT NULL,
    seq    bigint           NOT NULL,
    ts     bigint           NOT NULL,
    price  double precision NOT NULL,
    bid    double precision NOT NULL,
    ask    double precision NOT NULL,
    size   bigint           NOT NULL,
    vol    double precision NOT NULL,
    PRIMARY KEY (gseq, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE IF NOT EXISTS ticks_default PARTITION OF ticks DEFAULT;

-- Per-symbol reads, pagination by gseq, and the duplicate check on insert.
CREATE INDEX IF NOT EXISTS ticks_symbol_gseq ON ticks (symbol, gseq);
-- Time ranges: ts grows with insertion order, which is what BRIN summarises cheaply.
CREATE INDEX IF NOT EXISTS ticks_ts_brin ON ticks USING brin (ts);

CREATE TABLE IF NOT EXISTS engine_state (
    id      integer     PRIMARY KEY CHECK (id = 1),
    state   text        NOT NULL,
    updated timestamptz NOT NULL DEFAULT now()
);
