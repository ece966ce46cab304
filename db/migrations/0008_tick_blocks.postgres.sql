-- Ticks in blocks (marketfeed/history/blocks.py): a row per symbol, flush and minute, holding that
-- block's ticks as arrays in gseq order and their OHLCV. The table of a row per tick cost the writer's
-- backend 5-8 microseconds a tick in keys, BRIN summaries and the candle trigger; here those are paid
-- once a block (docs/performance.md, section 3). This file makes the table on plain PostgreSQL, in day
-- partitions, with its candle trigger; 0009_ticks_to_blocks.sql moves the stored ticks into it and
-- leaves `ticks` as a view of the same columns, for SQL users.
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

-- The day partitions of the ticks already stored (0009 moves them).
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

-- candles_1m is made again from the blocks by the trigger below as 0009 moves the ticks in.
TRUNCATE candles_1m;

-- candles_1m, kept per statement from the blocks' own OHLCV: a row per block, not per tick. A minute
-- split over several blocks keeps the earliest open and the latest close, by gseq. And the widest
-- block's span (0009).
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
