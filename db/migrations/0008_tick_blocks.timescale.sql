-- Ticks in blocks on TimescaleDB: the same table as 0008_tick_blocks.postgres.sql (read that file
-- first), as a hypertable in one-day chunks on `minute`, compressed by symbol a day after. The
-- continuous aggregate candles_1m becomes the table the plain flavour keeps, with the same columns
-- (first_gseq and last_gseq turn a time range into a gseq range); TimescaleDB refuses transition
-- tables on hypertables, so its trigger runs once per block instead of once per statement.
CREATE TABLE tick_blocks (
    symbol     text               NOT NULL,
    minute     bigint             NOT NULL,
    first_gseq bigint             NOT NULL,
    last_gseq  bigint             NOT NULL,
    first_ts   bigint             NOT NULL,
    last_ts    bigint             NOT NULL,
    open       double precision   NOT NULL,
    high       double precision   NOT NULL,
    low        double precision   NOT NULL,
    close      double precision   NOT NULL,
    volume     bigint             NOT NULL,
    trades     bigint             NOT NULL,
    pv         double precision   NOT NULL,
    gseq       bigint[]           NOT NULL,
    seq        bigint[]           NOT NULL,
    ts         bigint[]           NOT NULL,
    price      double precision[] NOT NULL,
    bid        double precision[] NOT NULL,
    ask        double precision[] NOT NULL,
    size       bigint[]           NOT NULL,
    vol        double precision[] NOT NULL,
    PRIMARY KEY (symbol, first_gseq, minute)
);
SELECT create_hypertable('tick_blocks', by_range('minute', 86400000000000), if_not_exists => TRUE);
SELECT set_integer_now_func('tick_blocks', 'marketfeed_now_ns', replace_if_exists => TRUE);
CREATE INDEX tick_blocks_first_gseq ON tick_blocks (first_gseq);
-- The widest block's last_gseq - first_gseq (under 65,536), kept by the trigger below: a read of the
-- ticks of (lo, hi] needs the blocks starting in [lo - span, hi] only.
CREATE TABLE tick_blocks_span (
    id   integer PRIMARY KEY CHECK (id = 1),
    span bigint  NOT NULL
);
INSERT INTO tick_blocks_span VALUES (1, 0);
CREATE INDEX tick_blocks_minute ON tick_blocks (minute, first_gseq) INCLUDE (last_gseq);

INSERT INTO tick_blocks
SELECT symbol, min(ts) / 60000000000 * 60000000000, min(gseq), max(gseq), min(ts), max(ts),
       (array_agg(price ORDER BY gseq))[1], max(price), min(price), (array_agg(price ORDER BY gseq DESC))[1],
       sum(size), count(*), sum(price * size),
       array_agg(gseq ORDER BY gseq), array_agg(seq ORDER BY gseq), array_agg(ts ORDER BY gseq),
       array_agg(price ORDER BY gseq), array_agg(bid ORDER BY gseq), array_agg(ask ORDER BY gseq),
       array_agg(size ORDER BY gseq), array_agg(vol ORDER BY gseq)
FROM (
    -- Runs of a symbol's ticks in gseq order within one minute and one SPAN (a clock set back can
    -- bring a minute back later: that is another run, so one symbol's blocks never overlap), cut
    -- every 100 ticks.
    SELECT *, (row_number() OVER (PARTITION BY symbol, run ORDER BY gseq) - 1) / 100 AS part
    FROM (SELECT *, sum(cut) OVER (PARTITION BY symbol ORDER BY gseq) AS run
          FROM (SELECT *, CASE WHEN lag(ts / 60000000000) OVER w = ts / 60000000000
                                AND lag(gseq / 65536) OVER w = gseq / 65536 THEN 0 ELSE 1 END AS cut
                FROM ticks WINDOW w AS (PARTITION BY symbol ORDER BY gseq)) cuts) runs
) t
GROUP BY symbol, run, part;

DROP MATERIALIZED VIEW IF EXISTS candles_1m;
CREATE TABLE candles_1m (
    symbol     text             NOT NULL,
    start      bigint           NOT NULL,
    open       double precision NOT NULL,
    high       double precision NOT NULL,
    low        double precision NOT NULL,
    close      double precision NOT NULL,
    volume     bigint           NOT NULL,
    trades     bigint           NOT NULL,
    pv         double precision NOT NULL,
    first_gseq bigint           NOT NULL,
    last_gseq  bigint           NOT NULL,
    PRIMARY KEY (symbol, start)
);
CREATE INDEX candles_1m_last_gseq ON candles_1m (last_gseq);
INSERT INTO candles_1m
SELECT symbol, minute, (min(ARRAY[first_gseq::float8, open]))[2], max(high), min(low),
       (max(ARRAY[last_gseq::float8, close]))[2], sum(volume), sum(trades), sum(pv), min(first_gseq), max(last_gseq)
FROM tick_blocks
GROUP BY 1, 2;

UPDATE tick_blocks_span SET span = (SELECT coalesce(max(last_gseq - first_gseq), 0) FROM tick_blocks);

DROP TABLE ticks CASCADE;

CREATE FUNCTION block_to_minute() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO candles_1m VALUES (NEW.symbol, NEW.minute, NEW.open, NEW.high, NEW.low, NEW.close,
                                   NEW.volume, NEW.trades, NEW.pv, NEW.first_gseq, NEW.last_gseq)
    ON CONFLICT (symbol, start) DO UPDATE SET
        open = CASE WHEN excluded.first_gseq < candles_1m.first_gseq
                    THEN excluded.open ELSE candles_1m.open END,
        close = CASE WHEN excluded.last_gseq > candles_1m.last_gseq
                     THEN excluded.close ELSE candles_1m.close END,
        high = greatest(candles_1m.high, excluded.high),
        low = least(candles_1m.low, excluded.low),
        volume = candles_1m.volume + excluded.volume,
        trades = candles_1m.trades + excluded.trades,
        pv = candles_1m.pv + excluded.pv,
        first_gseq = least(candles_1m.first_gseq, excluded.first_gseq),
        last_gseq = greatest(candles_1m.last_gseq, excluded.last_gseq);
    UPDATE tick_blocks_span SET span = NEW.last_gseq - NEW.first_gseq WHERE span < NEW.last_gseq - NEW.first_gseq;
    RETURN NULL;
END
$$;
CREATE TRIGGER block_minute AFTER INSERT ON tick_blocks FOR EACH ROW EXECUTE FUNCTION block_to_minute();

ALTER TABLE tick_blocks SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'symbol',
    timescaledb.compress_orderby = 'first_gseq'
);
SELECT add_compression_policy('tick_blocks', compress_after => 86400000000000::bigint, if_not_exists => TRUE);

CREATE VIEW ticks AS
SELECT t.gseq, b.symbol, t.seq, t.ts, t.price, t.bid, t.ask, t.size, t.vol
FROM tick_blocks b,
     unnest(b.gseq, b.seq, b.ts, b.price, b.bid, b.ask, b.size, b.vol)
         AS t(gseq, seq, ts, price, bid, ask, size, vol);
