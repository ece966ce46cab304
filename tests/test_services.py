"""The integration services are real: each answers its own protocol, and can be stopped and restarted."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis as redis_py
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from services import Kafka, Postgres, Redis

pytestmark = pytest.mark.integration


def test_postgres_is_a_real_postgresql(postgres: Postgres) -> None:
    async def scenario() -> str:
        conn = await asyncpg.connect(postgres.dsn)
        try:
            await conn.execute("CREATE TABLE probe (id int PRIMARY KEY, label text)")
            await conn.executemany("INSERT INTO probe VALUES ($1, $2)", [(1, "a"), (2, "b")])
            assert await conn.fetchval("SELECT count(*) FROM probe") == 2
            version: str = await conn.fetchval("SELECT version()")
            await conn.execute("DROP TABLE probe")
            return version
        finally:
            await conn.close()

    assert asyncio.run(scenario()).startswith("PostgreSQL")


def test_redis_is_real_and_comes_back_after_a_restart(redis: Redis) -> None:
    client = redis_py.Redis.from_url(redis.url, socket_timeout=2)
    client.set("probe", "1")
    with client.pipeline(transaction=False) as pipe:
        pipe.incr("probe")
        pipe.get("probe")
        assert pipe.execute() == [2, b"2"]
    redis.stop()
    with pytest.raises(redis_py.ConnectionError):
        client.ping()
    redis.start()
    assert client.ping()
    client.close()


def test_kafka_is_a_real_broker(kafka: Kafka) -> None:
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.create_topics([NewTopic("probe", num_partitions=3, replication_factor=1)])["probe"].result(30)
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True, "acks": "all"})
    for i in range(100):
        producer.produce("probe", key=f"k{i % 7}", value=str(i))
    assert producer.flush(30) == 0
    consumer = Consumer(
        {"bootstrap.servers": kafka.bootstrap, "group.id": "probe", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe(["probe"])
    values: list[int] = []
    try:
        for _ in range(60):
            for message in consumer.consume(100, timeout=1.0):
                assert message.error() is None
                values.append(int(message.value() or b"-1"))
            if len(values) >= 100:
                break
    finally:
        consumer.close()
    assert sorted(values) == list(range(100))
