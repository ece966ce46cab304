-- Candles and time-range reads for one symbol (the hypertable's own index is on ts alone).
CREATE INDEX IF NOT EXISTS ticks_symbol_ts ON ticks (symbol, ts);
