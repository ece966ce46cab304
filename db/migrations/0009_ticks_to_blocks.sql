-- The ticks stored a row each, moved into blocks (0008_tick_blocks.*.sql made the table and its
-- candle trigger for the flavour), then `ticks` as a view for SQL users. Both flavours.

-- Every symbol's blocks of a gseq range: pages across symbols, and the writer's duplicate check.
CREATE INDEX tick_blocks_first_gseq ON tick_blocks (first_gseq);
-- Where a time range starts and ends in gseq, across all symbols (ALL_MINUTES in postgres.py).
CREATE INDEX tick_blocks_minute ON tick_blocks (minute, first_gseq) INCLUDE (last_gseq);
-- The widest block's last_gseq - first_gseq (under 65,536), kept by the candle trigger: a read of
-- the ticks of (lo, hi] needs the blocks starting in [lo - span, hi] only.
CREATE TABLE tick_blocks_span (
    id   integer PRIMARY KEY CHECK (id = 1),
    span bigint  NOT NULL
);
INSERT INTO tick_blocks_span VALUES (1, 0);

-- A block per run of a symbol's ticks (a row per tick made no flushes to keep apart).
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

DROP TABLE ticks CASCADE;
DROP FUNCTION IF EXISTS ticks_to_minutes();

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
