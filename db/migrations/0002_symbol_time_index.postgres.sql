-- Candles and time-range reads for one symbol: the rows of that symbol in that range, and only
-- those (BRIN on ts alone reads every symbol's rows of the range).
CREATE INDEX IF NOT EXISTS ticks_symbol_ts ON ticks (symbol, ts);
