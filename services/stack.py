"""`fraudctl up`, `status`, `down`: the whole system running, in either profile.

* compose: `docker compose up -d --wait` (with a `.env` holding a generated admin token
  when there is none), `docker compose ps`, `docker compose down`.
* embedded, for people without Docker: the same processes as local children, detached,
  with their logs under `var/logs/` and their pids under `var/run/`: the broker, the
  stream processor, the scoring service, the monitor and the gateway. Before them, the
  compose stack's init job itself (`infra/init.sh`: a dataset, the backfill, the first
  champion and challenger; each step skipped when already done).

`status` prints the same table in both: each process's health, and the key figures read
from the processes' own endpoints (the champion, the scoring p99 since start, the stream's
lag, the drift alarms).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core.settings import PROJECT_ROOT, Settings, get_settings


@dataclass(frozen=True)
class Process:
    name: str
    argv: list[str]  # after `fraudctl`, or after `sh` for a script, or a program's own argv
    health: str | None  # an HTTP URL answering 200 when healthy; None: alive is healthy
    runner: str = "fraudctl"  # fraudctl | sh | program


PROMETHEUS_CONFIG = PROJECT_ROOT / "infra" / "prometheus" / "prometheus.yml"


def embedded_processes(settings: Settings) -> list[Process]:
    """What `fraudctl up` starts in the embedded profile, in start order.

    Prometheus too when its binary is installed (Debian's `prometheus` package), with the
    compose stack's config and alert rules aimed at these processes: the dashboards'
    queries then work here as there (`fraudctl dashboards`).
    """
    scoring = f"http://127.0.0.1:{settings.serve_port}"
    processes = [
        Process("broker", ["broker"], None),
        Process("stream", ["stream", "--metrics-port", str(settings.stream_metrics_port)],
                f"http://127.0.0.1:{settings.stream_metrics_port}/metrics"),
        Process("scoring", ["serve", "--port", str(settings.serve_port)], f"{scoring}/readyz"),
        Process("monitor", ["monitor", "--port", str(settings.monitor_port)],
                f"http://127.0.0.1:{settings.monitor_port}/metrics"),
        Process("gateway", [str(PROJECT_ROOT / "infra" / "gateway.sh")], None, runner="sh"),
    ]  # fmt: skip
    binary = shutil.which("prometheus")
    if binary is not None:
        folder = settings.var_dir / "prometheus"
        argv = [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{settings.prometheus_port}",
            "--log.level=warn",
        ]
        ready = f"http://127.0.0.1:{settings.prometheus_port}/-/ready"
        processes.append(Process("prometheus", argv, ready, runner="program"))
    return processes


def local_prometheus_config(targets: dict[str, list[str]], scrape_interval: str | None = None) -> str:
    """The compose stack's prometheus.yml with these `job -> [host:port]` targets in place of
    Docker DNS, and its rule files by absolute path: one config, two places it runs."""
    import yaml

    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / name) for name in config["rule_files"]]
    if scrape_interval is not None:
        config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = scrape_interval
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    if jobs != set(targets):
        raise ValueError(f"targets for {sorted(targets)}, but the config scrapes {sorted(jobs)}")
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    return str(yaml.safe_dump(config, sort_keys=False))


def write_prometheus_config(settings: Settings) -> Path:
    """`var/prometheus/prometheus.yml`: the embedded processes as Prometheus's targets."""
    path = settings.var_dir / "prometheus" / "prometheus.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = {
        "scoring": [f"127.0.0.1:{settings.serve_port}"],
        "stream": [f"127.0.0.1:{settings.stream_metrics_port}"],
        "monitor": [f"127.0.0.1:{settings.monitor_port}"],
    }
    path.write_text(local_prometheus_config(targets))
    return path


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.var_dir / "run" / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_pid(settings: Settings, name: str) -> int | None:
    path = _pid_file(settings, name)
    if not path.exists():
        return None
    pid = int(path.read_text())
    return pid if _alive(pid) else None


def _healthy(process: Process, pid: int | None) -> bool:
    import httpx

    if pid is None:
        return False
    if process.health is None:
        return True
    try:
        return httpx.get(process.health, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _env(settings: Settings) -> dict[str, str]:
    return os.environ | {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "FRAUD_VAR_DIR": str(settings.var_dir),
        "IMPORT_DIR": str(settings.var_dir / "import"),
        "GATEWAY_SCORE_URL": f"http://127.0.0.1:{settings.serve_port}",
        # As in the compose stack (docker-compose.yml): ten replayed days, of which the first
        # matures (7 days) within minutes, so the matured metrics appear.
        "GATEWAY_RPS": os.environ.get("GATEWAY_RPS", "50"),
        "GATEWAY_DAYS": os.environ.get("GATEWAY_DAYS", "10"),
        "FRAUD_MATURITY_DAYS": os.environ.get("FRAUD_MATURITY_DAYS", "7"),
    }


def up_embedded(settings: Settings, console: Console, timeout_s: float = 600.0) -> None:
    env = _env(settings)
    logs = settings.var_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _pid_file(settings, "x").parent.mkdir(parents=True, exist_ok=True)
    broker, *processes = embedded_processes(settings)
    _spawn(broker, settings, env)  # first: the init job publishes to it
    _wait_healthy(broker, settings, console, timeout_s)
    console.print("[bold]init[/]: the compose init job's script, infra/init.sh (skips what is done)")
    init = subprocess.run(["sh", str(PROJECT_ROOT / "infra" / "init.sh")], env=env, check=False)
    if init.returncode != 0:
        raise RuntimeError(f"infra/init.sh failed (exit {init.returncode}); its output is above")
    # Side by side, as compose starts them once the init job is done; the gateway, the
    # traffic, once what it needs is healthy.
    services = [p for p in processes if p.name != "gateway"]
    for process in services:
        _spawn(process, settings, env)
    for process in services:
        _wait_healthy(process, settings, console, timeout_s)
    for process in processes:
        if process.name == "gateway":
            _spawn(process, settings, env)
            _wait_healthy(process, settings, console, timeout_s)


def _spawn(process: Process, settings: Settings, env: dict[str, str]) -> None:
    """Start `process` detached, unless it runs already."""
    if _running_pid(settings, process.name) is not None:
        return
    fraudctl = str(Path(sys.executable).parent / "fraudctl")
    command = {"fraudctl": [fraudctl], "sh": ["sh"], "program": []}[process.runner] + process.argv
    if process.name == "prometheus":
        write_prometheus_config(settings)
    with (settings.var_dir / "logs" / f"{process.name}.log").open("a") as log:
        child = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )  # its own session: it outlives this command, and `down` stops its group
    _pid_file(settings, process.name).write_text(str(child.pid))


def _wait_healthy(process: Process, settings: Settings, console: Console, timeout_s: float) -> None:
    log = settings.var_dir / "logs" / f"{process.name}.log"
    deadline = time.monotonic() + timeout_s
    with console.status(f"waiting for {process.name} (log: {log})"):
        while not _healthy(process, _running_pid(settings, process.name)):
            if _running_pid(settings, process.name) is None:
                raise RuntimeError(f"{process.name} exited; the end of its log:\n{log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{process.name} not healthy in {timeout_s:.0f} s")
            time.sleep(0.5)
        if process.name == "broker":
            from pipelines.kafka_clients import wait_until_ready

            wait_until_ready(settings.kafka_bootstrap, timeout_s=60)
    if process.name == "stream":
        with console.status("the stream processor reads the history (its state) from the topics"):
            _wait_caught_up(process, deadline)
    console.print(f"[green]✓[/] {process.name} (pid {_running_pid(settings, process.name)})")


def _wait_caught_up(stream: Process, deadline: float) -> None:
    """Until the stream processor owns partitions and has consumed each to its end.

    Traffic scored before would read cards whose online rows the history's rebuild is still
    rewriting (the embedded SQLite store upserts; compose's Redis store skips older rows).
    """
    assert stream.health is not None
    while time.monotonic() < deadline:
        samples = _samples(stream.health)
        assigned = sum(s.value for s in samples if s.name == "fraud_stream_assigned_partitions")
        lag = [s.value for s in samples if s.name == "fraud_stream_consumer_lag"]
        if assigned and lag and not any(lag):
            return
        time.sleep(0.5)
    raise TimeoutError("the stream processor did not catch up with its topics in time")


def _samples(url: str) -> list[Any]:
    """Every sample of a /metrics page; none when it does not answer."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return []
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


# `down` stops in waves: the traffic first, then what serves and processes it (each flushing
# to the broker), the broker last.
DOWN_WAVES = (("gateway",), ("monitor", "scoring", "stream", "prometheus"), ("broker",))


def down_embedded(settings: Settings, console: Console) -> None:
    processes = {p.name: p for p in embedded_processes(settings)}
    for wave in DOWN_WAVES:
        stopping = {}
        for name in wave:
            pid = _running_pid(settings, name)
            _pid_file(settings, name).unlink(missing_ok=True)
            if pid is None:
                continue
            # A fraudctl process stops its own children in order (the scoring service flushes
            # its prediction writer): signalling the group would kill the writer first, with
            # its pending records. A script (the gateway) has no such care: its whole group.
            if name in processes and processes[name].runner == "sh":
                os.killpg(pid, signal.SIGTERM)
            else:
                os.kill(pid, signal.SIGTERM)
            stopping[name] = pid
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in stopping.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for name, pid in stopping.items():
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
                console.print(f"killed {name} (pid {pid}): still running 30 s after SIGTERM")
            else:
                console.print(f"stopped {name} (pid {pid})")


def key_figures(settings: Settings, scoring_url: str) -> dict[str, Any]:
    """What `status` shows beside health, read from the processes' own endpoints."""
    import httpx

    samples = _samples
    figures: dict[str, Any] = {}
    try:
        model = httpx.get(f"{scoring_url}/v1/model", timeout=2).json()
        figures["champion"] = (model.get("champion") or {}).get("version")
        figures["canary_percent"], figures["kill_switch"] = model["canary_percent"], model["kill_switch"]
    except (httpx.HTTPError, ValueError, KeyError):
        figures["champion"] = None
    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for s in samples(f"{scoring_url}/metrics")
        if s.name == "fraud_score_request_duration_seconds_bucket"
    )
    total = buckets[-1][1] if buckets else 0.0
    figures["scored"] = int(total)
    figures["p99_ms"] = next((le * 1000 for le, n in buckets if n >= 0.99 * total), None) if total else None
    lag = [s.value for s in samples(f"http://127.0.0.1:{settings.stream_metrics_port}/metrics")
           if s.name == "fraud_stream_consumer_lag"]  # fmt: skip
    figures["stream_lag"] = int(sum(lag)) if lag else None
    alarms = [s.value for s in samples(f"http://127.0.0.1:{settings.monitor_port}/metrics")
              if s.name == "fraud_drift_alarm"]  # fmt: skip
    figures["drift_alarms"] = int(sum(alarms)) if alarms else None
    return figures


def status_rows(settings: Settings) -> list[dict[str, Any]]:
    rows = []
    for process in embedded_processes(settings):
        pid = _running_pid(settings, process.name)
        state = "healthy" if _healthy(process, pid) else ("starting" if pid else "stopped")
        rows.append({"service": process.name, "state": state, "pid": pid})
    return rows


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "compose", *args], cwd=PROJECT_ROOT, text=True, check=False)


def ensure_env_file(path: Path = PROJECT_ROOT / ".env") -> bool:
    """A `.env` from `.env.example` with a generated admin token, if there is none; True if written."""
    if path.exists():
        return False
    example = (path.parent / ".env.example").read_text()
    token = secrets.token_urlsafe(32)
    path.write_text(example.replace("FRAUD_ADMIN_TOKEN=\n", f"FRAUD_ADMIN_TOKEN={token}\n"))
    path.chmod(0o600)
    return True


def _urls(settings: Settings) -> dict[str, str]:
    if settings.profile == "compose":
        return {
            "scoring": "http://localhost:8000", "monitor": "http://localhost:9109/",
            "grafana": "http://localhost:3000", "prometheus": "http://localhost:9090",
            "mlflow": "http://localhost:5000",
        }  # fmt: skip
    urls = {
        "scoring": f"http://127.0.0.1:{settings.serve_port}",
        "monitor": f"http://127.0.0.1:{settings.monitor_port}/",
        "stream metrics": f"http://127.0.0.1:{settings.stream_metrics_port}/metrics",
        "mlflow": settings.mlflow_tracking_uri,
    }
    if any(p.name == "prometheus" for p in embedded_processes(settings)):
        urls["prometheus"] = f"http://127.0.0.1:{settings.prometheus_port}"
        urls["dashboards"] = (
            f"fraudctl dashboards --prometheus {urls['prometheus']} (PNGs; Grafana is compose's)"
        )
    else:
        urls["dashboards"] = "apt-get install prometheus, then `fraudctl up` again (Grafana is compose's)"
    return urls


def up(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each process to be healthy.")] = 600.0,
) -> None:
    """Start the whole system and wait until every part is healthy; print where to look.

    Compose profile: docker compose up -d --wait (a .env with a generated admin token first).
    Embedded profile: the broker, stream, scoring service, monitor and gateway as local
    processes (logs in var/logs/), after the init job (dataset, backfill, first models).

    Example: fraudctl up && fraudctl status
    """
    settings, console = get_settings(), Console()
    if settings.profile == "compose":
        if ensure_env_file():
            console.print("wrote .env with a generated FRAUD_ADMIN_TOKEN")
        if _compose("up", "-d", "--wait", "--wait-timeout", str(int(timeout))).returncode != 0:
            raise typer.Exit(1)
    else:
        try:
            up_embedded(settings, console, timeout)
        except (RuntimeError, TimeoutError) as error:
            console.print(f"[red]error[/]: {escape(str(error))}")
            raise typer.Exit(1) from None
    for name, url in _urls(settings).items():
        console.print(f"{name:>15}: {url}")


def status(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Each part's health, and the champion, scoring p99, stream lag and drift alarms.

    Example: fraudctl status --json
    """
    settings = get_settings()
    if settings.profile == "compose":
        raise typer.Exit(_compose("ps").returncode)
    figures = key_figures(settings, _urls(settings)["scoring"])
    rows = status_rows(settings)
    if as_json:
        typer.echo(json.dumps({"services": rows, **figures}))
        return
    table = Table(title="fraudctl status (embedded)")
    for column in ("service", "state", "pid"):
        table.add_column(column)
    for row in rows:
        colour = {"healthy": "green", "starting": "yellow"}.get(row["state"], "red")
        table.add_row(row["service"], f"[{colour}]{row['state']}[/]", str(row["pid"] or "–"))
    console = Console()
    console.print(table)

    def shown(key: str) -> str:
        value = figures.get(key)
        return "–" if value is None else f"{value:,}" if isinstance(value, int | float) else str(value)

    p99 = "–" if figures.get("p99_ms") is None else f"≤ {figures['p99_ms']:.0f} ms"  # a bucket's bound
    console.print(
        f"champion {shown('champion')}, scored {shown('scored')} (p99 {p99} since start), "
        f"stream lag {shown('stream_lag')}, drift alarms {shown('drift_alarms')}"
    )


def down(
    volumes: Annotated[
        bool, typer.Option("--volumes", help="Compose: also remove the named volumes.")
    ] = False,
) -> None:
    """Stop everything `fraudctl up` started (its state stays; `fraudctl clean` removes var/).

    Example: fraudctl down
    """
    settings = get_settings()
    if settings.profile == "compose":
        raise typer.Exit(_compose("down", *(["--volumes"] if volumes else [])).returncode)
    down_embedded(settings, Console())
