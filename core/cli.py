"""`fraudctl`: the one command line of the system. Each verb lives in its stage's module.

Run `fraudctl --help` for the list and `fraudctl VERB --help` for a verb's options.
"""

from __future__ import annotations

import logging
import shutil
import sys
from typing import Annotated

import typer
from pydantic import ValidationError

from core.dataset import DatasetError
from core.settings import get_settings
from monitoring import dashboards, drill, monitor
from pipelines import (
    backfill,
    broker,
    demo,
    import_transactions,
    online_features,
    registry_cli,
    replay,
    simulate,
    stream,
    train,
)
from services import loadtest, serve, stack

app = typer.Typer(
    name="fraudctl",
    help="Real-time card-fraud scoring, end to end: simulate → features (Feast) → train → serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.command("simulate")(simulate.cli)
app.command("import")(import_transactions.cli)
app.command("backfill")(backfill.cli)
app.command("features")(online_features.cli)
app.command("broker")(broker.cli)
app.command("stream")(stream.cli)
app.command("replay")(replay.cli)
app.command("train")(train.cli)
app.command("models")(registry_cli.models)
app.command("promote")(registry_cli.promote)
app.command("rollback")(registry_cli.rollback)
app.command("serve")(serve.cli)
app.command("loadtest")(loadtest.cli)
app.command("demo")(demo.cli)
app.command("monitor")(monitor.cli)
app.add_typer(drill.app, name="drill")
app.command("up")(stack.up)
app.command("status")(stack.status)
app.command("down")(stack.down)
app.command("dashboards")(dashboards.cli)


@app.command("clean")
def clean(yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False) -> None:
    """Remove all mutable state (the var/ folder: data, Feast stores, MLflow runs).

    Example: fraudctl clean --yes
    """
    var_dir = get_settings().var_dir
    if not var_dir.exists():
        typer.echo(f"{var_dir} does not exist; nothing to clean")
        return
    if not yes:
        typer.confirm(f"remove {var_dir}?", abort=True)
    shutil.rmtree(var_dir)
    typer.echo(f"removed {var_dir}")


@app.command("bench")
def bench(
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Run just these benchmarks (repeatable), e.g. simulate."),
    ] = None,
) -> None:
    """Run the benchmarks and write JSON to benchmarks/results/NAME.json.

    Example: fraudctl bench --only simulate
    """
    from benchmarks.run import run_benchmarks

    run_benchmarks(only)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Feast logs every registry refresh, kafka-python every connection, httpx every request at
    # INFO, matplotlib its font cache on first use.
    for chatty in ("feast", "kafka", "httpx", "matplotlib"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if verbose else logging.WARNING)
    # kafka-python warns when its own I/O loop waited >100 ms for the GIL: a busy process, not a fault.
    logging.getLogger("kafka.net.selector").setLevel(logging.DEBUG if verbose else logging.ERROR)


def _one_line(error: Exception) -> str:
    if isinstance(error, ValidationError):  # settings or an event: name the field, not a dump
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        prefix = f"FRAUD_{field.upper()}" if error.title == "Settings" else field
        return f"{prefix}: {first['msg']}"
    if isinstance(error, DatasetError | ValueError | FileNotFoundError):
        return str(error)
    # Anything else (a store or broker that cannot be reached, ...): its type and first line.
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0]} (run with --verbose for the traceback)"


def main() -> None:
    """Entry point: failures exit 1 with a one-line reason; --verbose shows the traceback."""
    verbose = any(arg in ("-v", "--verbose") for arg in sys.argv[1:])
    try:
        app()
    except Exception as error:
        if verbose:
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr)
        sys.exit(1)
