-- Ticks in blocks (marketfeed/history/blocks.py): a row per symbol, flush and minute, holding that
-- block's ticks as arrays in gseq order and their OHLCV. The table of a row per tick cost the writer's
-- backend about 5 microseconds a tick in keys, BRIN summaries and the candle trigger; here those are paid
-- once a block (docs/performance.md, section 3). `ticks` stays, as a view of the same columns, for SQL
-- users: reads from it unnest the blocks, and an insert into it stores a block of one tick.
CREATE TABLE tick_blocks (
    symbol     text               NOT NULL,
    minute     bigint             NOT NULL,  -- start of the minute (ns) holding every tick of the block
    first_gseq bigint             NOT NULL,
    last_gseq  bigint             NOT NULL,  -- less than first_gseq + 65536 (blocks.SPAN)
    first_ts   bigint             NOT NULL,
    last_ts    bigint             NOT NULL,
    open       double precision   NOT NULL,  -- of the block's ticks: first and last by gseq
    high       double precision   NOT NULL,
    low        double precision   NOT NULL,
    close      double precision   NOT NULL,
    volume     bigint             NOT NULL,
    trades     bigint             NOT NULL,  -- the number of ticks
    pv         double precision   NOT NULL,  -- sum of price * size
    gseq       bigint[]           NOT NULL,
    seq        bigint[]           NOT NULL,
    ts         bigint[]           NOT NULL,
    price      double precision[] NOT NULL,
    bid        double precision[] NOT NULL,
    ask        double precision[] NOT NULL,
    size       bigint[]           NOT NULL,
    vol        double precision[] NOT NULL,
    -- One symbol's blocks in gseq order (they never overlap): pages of one symbol.
    PRIMARY KEY (symbol, first_gseq, minute)
) PARTITION BY RANGE (minute);

-- A block row (at most 100 ticks) stays in its page as it is: compressing it or moving it to the
-- TOAST table would cost more than writing it. Set on each partition (the writer makes them so too).
CREATE TABLE tick_blocks_default PARTITION OF tick_blocks DEFAULT WITH (toast_tuple_target = 8160);
-- Every symbol's blocks of a gseq range: pages across symbols, and the writer's duplicate check.
CREATE INDEX tick_blocks_first_gseq ON tick_blocks (first_gseq);
-- The widest block's last_gseq - first_gseq (under 65,536), kept by the trigger below: a read of the
-- ticks of (lo, hi] needs the blocks starting in [lo - span, hi] only.
CREATE TABLE tick_blocks_span (
    id   integer PRIMARY KEY CHECK (id = 1),
    span bigint  NOT NULL
);
INSERT INTO tick_blocks_span VALUES (1, 0);
-- Where a time range starts and ends in gseq, across all symbols (ALL_MINUTES in postgres.py).
CREATE INDEX tick_blocks_minute ON tick_blocks (minute, first_gseq) INCLUDE (last_gseq);

-- The day partitions of the ticks already stored, then their blocks: a block per symbol, minute and
-- SPAN of gseq (a row per tick made no flushes to keep apart), at most 100 ticks each.
DO $$
DECLARE day bigint;
BEGIN
    FOR day IN SELECT DISTINCT ts / 86400000000000 FROM ticks WHERE ts >= 0 LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF tick_blocks FOR VALUES FROM (%s) TO (%s)'
                       ' WITH (toast_tuple_target = 8160)',
                       'tick_blocks_' || to_char(to_timestamp(day * 86400) AT TIME ZONE 'UTC', 'YYYYMMDD'),
                       day * 86400000000000, (day + 1) * 86400000000000);
    END LOOP;
END $$;

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

UPDATE tick_blocks_span SET span = (SELECT coalesce(max(last_gseq - first_gseq), 0) FROM tick_blocks);

DROP TABLE ticks CASCADE;
DROP FUNCTION IF EXISTS ticks_to_minutes();

-- candles_1m, kept per statement from the blocks' own OHLCV: a row per block, not per tick. A minute
-- split over several blocks keeps the earliest open and the latest close, by gseq. And the span.
CREATE FUNCTION blocks_to_minutes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO candles_1m
    SELECT symbol, minute,
           (min(ARRAY[first_gseq::float8, open]))[2], max(high), min(low), (max(ARRAY[last_gseq::float8, close]))[2],
           sum(volume), sum(trades), sum(pv), min(first_gseq), max(last_gseq)
    FROM new_blocks
    GROUP BY 1, 2
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
    UPDATE tick_blocks_span SET span = n.span
    FROM (SELECT max(last_gseq - first_gseq) AS span FROM new_blocks) n WHERE n.span > tick_blocks_span.span;
    RETURN NULL;
END
$$;

CREATE TRIGGER blocks_minutes AFTER INSERT ON tick_blocks
REFERENCING NEW TABLE AS new_blocks
FOR EACH STATEMENT EXECUTE FUNCTION blocks_to_minutes();

-- The ticks, a row each, in the columns of the table they replace.
CREATE VIEW ticks AS
SELECT t.gseq, b.symbol, t.seq, t.ts, t.price, t.bid, t.ask, t.size, t.vol
FROM tick_blocks b,
     unnest(b.gseq, b.seq, b.ts, b.price, b.bid, b.ask, b.size, b.vol)
         AS t(gseq, seq, ts, price, bid, ask, size, vol);

-- An insert into the view stores a block of one tick (its minute floored, as the writer does).
CREATE FUNCTION tick_to_block() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE minute bigint := NEW.ts - ((NEW.ts % 60000000000) + 60000000000) % 60000000000;
BEGIN
    INSERT INTO tick_blocks VALUES (
        NEW.symbol, minute, NEW.gseq, NEW.gseq, NEW.ts, NEW.ts,
        NEW.price, NEW.price, NEW.price, NEW.price, NEW.size, 1, NEW.price * NEW.size,
        ARRAY[NEW.gseq], ARRAY[NEW.seq], ARRAY[NEW.ts], ARRAY[NEW.price], ARRAY[NEW.bid], ARRAY[NEW.ask],
        ARRAY[NEW.size], ARRAY[NEW.vol]);
    RETURN NEW;
END
$$;

CREATE TRIGGER ticks_insert INSTEAD OF INSERT ON ticks FOR EACH ROW EXECUTE FUNCTION tick_to_block();
