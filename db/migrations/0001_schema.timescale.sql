-- Ticks on TimescaleDB: a hypertable on ts (bigint nanoseconds) in one-day chunks, compressed by
-- symbol. Same columns and keys as the plain-PostgreSQL schema, so every query is the same.
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
);

SELECT create_hypertable('ticks', by_range('ts', 86400000000000), if_not_exists => TRUE);

-- Integer time needs a "now" for policies and continuous aggregates: the wall clock in ns.
CREATE OR REPLACE FUNCTION marketfeed_now_ns() RETURNS bigint
    LANGUAGE sql STABLE AS $$ SELECT (extract(epoch FROM now()) * 1e9)::bigint $$;
SELECT set_integer_now_func('ticks', 'marketfeed_now_ns', replace_if_exists => TRUE);

CREATE INDEX IF NOT EXISTS ticks_symbol_gseq ON ticks (symbol, gseq);

ALTER TABLE ticks SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'symbol',
    timescaledb.compress_orderby = 'ts, gseq'
);
SELECT add_compression_policy('ticks', compress_after => 86400000000000::bigint, if_not_exists => TRUE);

CREATE TABLE IF NOT EXISTS engine_state (
    id      integer     PRIMARY KEY CHECK (id = 1),
    state   text        NOT NULL,
    updated timestamptz NOT NULL DEFAULT now()
);
