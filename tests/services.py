"""Real PostgreSQL, Redis and Apache Kafka servers for the integration tests.

Each is started lazily (only when a test asks for its fixture), once per session, on free loopback
ports in a temporary directory, and stopped at the end. The handles can `stop()` and `start()` a
server again on the same port and data (fault tests), or `kill()` it.

What is missing is installed by `.ci/install-services.sh` (run by `make test`). If a server still
cannot be found: under `CI=true` the test fails; on a developer's machine it is skipped with a message
saying how to install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL_HINT = "install it with: sudo bash .ci/install-services.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def unavailable(what: str) -> None:
    """Fail under CI (a missing service there is a broken set-up), skip elsewhere."""
    message = f"{what} is not available; {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Service:
    """A server process we own: started in its own session so stopping it stops all its children."""

    name = "service"

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def preexec_user(self) -> int | None:
        return None

    def start(self, timeout: float = 60.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        with self.log_path.open("ab") as log:
            uid = self.preexec_user()
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
                user=uid,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"{self.name} did not become ready in {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """A clean shutdown, as an operator would do it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """An abrupt stop: the whole process group, SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        while port_open(self.port):  # the port is free again before anyone restarts
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# --- PostgreSQL ------------------------------------------------------------------------------------------
def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("postgres")
    return Path(exe).parent if exe else None


class Postgres(Service):
    name = "postgres"

    def __init__(self, workdir: Path, port: int, bindir: Path) -> None:
        super().__init__(workdir, port)
        self.bindir = bindir
        self.data = workdir / "data"
        self.user = "marketfeed"
        # PostgreSQL refuses to run as root: then it runs as the `postgres` system user.
        self.uid = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else None
        self.dsn = f"postgresql://{self.user}@127.0.0.1:{port}/marketfeed"

    def preexec_user(self) -> int | None:
        return self.uid

    def initdb(self) -> None:
        if self.uid is not None:
            os.chown(self.workdir, self.uid, -1)
        initdb = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust"]
        subprocess.run(
            [*initdb, "-E", "UTF8"], check=True, capture_output=True, user=self.uid, cwd=self.workdir
        )

    def command(self) -> list[str]:
        # Durability is off: these databases live for one test session.
        return [
            str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.workdir}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200",
        ]  # fmt: skip

    def ready(self) -> bool:
        if not port_open(self.port):
            return False
        probe = subprocess.run(
            [str(self.bindir.parent / "bin" / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True, check=False,
        )  # fmt: skip
        return probe.returncode == 0

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: roll back clients, checkpoint, exit
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def execute(self, sql: str, database: str = "postgres") -> None:
        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}")
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(run())

    def create_database(self, name: str) -> str:
        """A fresh database for one test; returns its DSN."""
        self.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"


# --- Redis -----------------------------------------------------------------------------------------------
class Redis(Service):
    name = "redis"

    def __init__(self, workdir: Path, port: int, exe: str) -> None:
        super().__init__(workdir, port)
        self.exe = exe
        self.url = f"redis://127.0.0.1:{port}/0"

    def command(self) -> list[str]:
        return [
            self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), "--protected-mode", "no",
        ]  # fmt: skip

    def ready(self) -> bool:
        if not port_open(self.port):
            return False
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")


# --- Apache Kafka ----------------------------------------------------------------------------------------
def kafka_libs() -> Path | None:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "marketfeed"
    found = sorted(cache.glob("kafka-*/libs/.complete"))
    return found[-1].parent if found else None


#: The topic Kafka.ready() produces to (auto-created, one partition).
READY_TOPIC = "marketfeed-ready"


class Kafka(Service):
    """A single-node KRaft broker and controller from the official jars on Maven Central."""

    name = "kafka"

    def __init__(self, workdir: Path, port: int, libs: Path, java: str) -> None:
        super().__init__(workdir, port)
        self.libs = libs
        self.java = java
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{port}"
        self.config = workdir / "server.properties"

    def format(self) -> None:
        self.config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={self.workdir / 'data'}",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                ]
            )
            + "\n"
        )
        subprocess.run(
            [self.java, "-cp", f"{self.libs}/*", "kafka.tools.StorageTool", "format",
             "-t", "bWFya2V0ZmVlZC10ZXN0cw", "-c", str(self.config)],
            check=True, capture_output=True,
        )  # fmt: skip

    def command(self) -> list[str]:
        return [
            self.java, "-Xms256m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-cp", f"{self.libs}/*", "kafka.Kafka", str(self.config),
        ]  # fmt: skip

    def ready(self) -> bool:
        """Metadata answers, and an idempotent producer (as the bus's) has a message confirmed. A broker
        just started answers metadata while its coordinator still loads, and until then an idempotent
        producer gets no producer id ("Coordinator load in progress"): a server stopped in that window
        spent its whole shutdown flush waiting for it (tests/test_end_to_end.py, once)."""
        if not port_open(self.port):
            return False
        from confluent_kafka import KafkaError, Message, Producer
        from confluent_kafka.admin import AdminClient

        try:
            AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=2)
        except Exception:
            return False
        confirmed: list[bool] = []

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            confirmed.append(err is None)

        producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "acks": "all",
                             "message.timeout.ms": 5000})  # fmt: skip
        producer.produce(READY_TOPIC, value=b"ready", on_delivery=on_delivery)
        producer.flush(6)
        return confirmed == [True]


# --- fixtures --------------------------------------------------------------------------------------------
def workdir(name: str) -> Path:
    # Not under pytest's tmp_path: its parents are private to root, and PostgreSQL runs as `postgres`.
    path = Path(tempfile.mkdtemp(prefix=f"marketfeed-{name}-"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    bindir = postgres_bin()
    if bindir is None or (os.geteuid() == 0 and not _user_exists("postgres")):
        unavailable("PostgreSQL")
        raise AssertionError("unreachable")
    server = Postgres(workdir("postgres"), free_port(), bindir)
    server.initdb()
    server.start()
    server.execute("CREATE DATABASE marketfeed")
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis() -> Iterator[Redis]:
    exe = shutil.which("redis-server")
    if exe is None:
        unavailable("Redis (redis-server)")
        raise AssertionError("unreachable")
    server = Redis(workdir("redis"), free_port(), exe)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


def start_kafka(name: str) -> Kafka | None:
    """A formatted and started broker in workdir(`name`); None without the jars or Java."""
    libs, java = kafka_libs(), shutil.which("java")
    if libs is None or java is None:
        return None
    server = Kafka(workdir(name), free_port(), libs, java)
    server.format()
    server.start(timeout=90)
    return server


@pytest.fixture(scope="session")
def kafka() -> Iterator[Kafka]:
    server = start_kafka("kafka")
    if server is None:
        unavailable("Apache Kafka (jars from Maven Central) or Java")
        raise AssertionError("unreachable")
    yield server
    server.stop()
    server.kill()
    shutil.rmtree(server.workdir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
