-- Ticks in blocks on TimescaleDB: the table of 0008_tick_blocks.postgres.sql (read that file first) as
-- a hypertable in one-day chunks on `minute`, compressed by symbol a day after. The continuous
-- aggregate candles_1m becomes the table the plain flavour keeps, with the same columns (first_gseq
-- and last_gseq turn a time range into a gseq range), filled by the trigger as 0009 moves the ticks
-- in; TimescaleDB refuses transition tables on hypertables, so the trigger runs once per block.
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
) WITH (toast_tuple_target = 8160);  -- a block row stays in its page as it is (chunks inherit this)
SELECT create_hypertable('tick_blocks', by_range('minute', 86400000000000), if_not_exists => TRUE);
SELECT set_integer_now_func('tick_blocks', 'marketfeed_now_ns', replace_if_exists => TRUE);

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
