-- One-minute OHLCV per symbol, kept by the batch writer in the transaction of the ticks it covers, so
-- a day of candles reads 1,440 rows instead of aggregating every tick of the day (the TimescaleDB
-- flavour has the same columns as a continuous aggregate, 0002_candles_1m.timescale.sql). Open and
-- close are the first and last trade by gseq; first_gseq/last_gseq let later writes merge into a
-- minute exactly, whatever order its ticks arrive in.
CREATE TABLE IF NOT EXISTS candles_1m (
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

-- Minutes of the ticks already stored.
INSERT INTO candles_1m
SELECT symbol, ts / 60000000000 * 60000000000,
       (array_agg(price ORDER BY gseq))[1], max(price), min(price), (array_agg(price ORDER BY gseq DESC))[1],
       sum(size), count(*), sum(price * size), min(gseq), max(gseq)
FROM ticks
GROUP BY 1, 2
ON CONFLICT DO NOTHING;
