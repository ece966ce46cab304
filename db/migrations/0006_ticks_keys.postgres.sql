-- Fewer indexes on ticks, for ingest: each B-tree that every row enters costs the writer's backend
-- about 2 microseconds a row (bench/ingest.py), and there were three. One key, (symbol, gseq, ts),
-- now does the work of two: the duplicate check and per-symbol pages in gseq order. Time ranges of a
-- symbol no longer need (symbol, ts): candles_1m, written in the ticks' own transaction, holds the
-- first and last gseq of every symbol-minute, which turns a time range into a gseq range on the key.
-- Reads across all symbols use BRIN on ts (0001) and on gseq (here): both grow with insertion order.
ALTER TABLE ticks DROP CONSTRAINT IF EXISTS ticks_pkey;
DROP INDEX IF EXISTS ticks_symbol_gseq;
DROP INDEX IF EXISTS ticks_symbol_ts;
ALTER TABLE ticks ADD PRIMARY KEY (symbol, gseq, ts);
CREATE INDEX IF NOT EXISTS ticks_gseq_brin ON ticks USING brin (gseq);
-- The writer's start-up reads the newest stored gseq from here (max(gseq) on ticks would now scan).
CREATE INDEX IF NOT EXISTS candles_1m_last_gseq ON candles_1m (last_gseq);
