-- One-minute OHLCV kept up to date by TimescaleDB. Open and close are the first and last trade by
-- gseq, as in every other candle query; real-time aggregation is on (it is off by default since
-- 2.13), so the newest minute is never stale.
CREATE MATERIALIZED VIEW IF NOT EXISTS candles_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(60000000000::bigint, ts) AS start,
       symbol,
       first(price, gseq) AS open,
       max(price)         AS high,
       min(price)         AS low,
       last(price, gseq)  AS close,
       sum(size)          AS volume,
       count(*)           AS trades,
       sum(price * size)  AS pv
FROM ticks
GROUP BY 1, 2
WITH NO DATA;

SELECT add_continuous_aggregate_policy('candles_1m',
    start_offset => 3600000000000::bigint,   -- refresh the last hour
    end_offset => 60000000000::bigint,        -- up to the last complete minute
    schedule_interval => INTERVAL '1 minute',
    if_not_exists => TRUE);
