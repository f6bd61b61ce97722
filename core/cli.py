"""`fraudctl`: the one command line of the system. Each verb lives in its stage's module.

Run `fraudctl --help` for the list and `fraudctl VERB --help` for a verb's options.
"""

from __future__ import annotations

import logging
import shutil
import sys
import warnings
from typing import Annotated

import typer

from core.dataset import DatasetError
from core.settings import get_settings
from pipelines import backfill, broker, demo, import_transactions, online_features, replay, simulate

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
app.command("replay")(replay.cli)
app.command("demo")(demo.cli)


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
    # Feast logs every registry refresh and kafka-python every connection at INFO.
    for chatty in ("feast", "kafka"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if verbose else logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main() -> None:
    """Entry point: expected failures exit 1 with a one-line reason, not a traceback."""
    try:
        app()
    except (DatasetError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
