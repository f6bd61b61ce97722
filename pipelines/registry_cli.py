"""`fraudctl models`, `promote`, `rollback`: the registry verbs (`models.registry` does the work)."""

from __future__ import annotations

import json
import math
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.settings import get_settings

# The table's metrics and their headers, few enough for 80 columns (--json has them all).
KEY_METRICS = {"average_precision": "AP", "roc_auc": "ROC-AUC", "savings_vs_rules": "saved vs rules"}


def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the registered versions of fraud-detector with their aliases and test metrics.

    Example: fraudctl models --json
    """
    from models.registry import alias_log, connect, list_versions

    settings = get_settings()
    rows = list_versions(settings)
    if as_json:
        typer.echo(json.dumps({"versions": rows, "alias_log": alias_log(connect(settings))}, indent=2))
        return
    if not rows:
        typer.echo("no versions of fraud-detector yet: run `fraudctl train`")
        return
    table = Table(title="fraud-detector")
    for column in ["version", "aliases", "model", "created"]:
        table.add_column(column)
    for header in KEY_METRICS.values():
        table.add_column(header, justify="right")
    for row in rows:
        numbers = [row.get(k, math.nan) for k in KEY_METRICS]
        table.add_row(
            row["version"],
            ", ".join(row["aliases"]),
            row["model_type"],
            row["created"][5:],  # the year goes: a registry's versions are recent
            *(f"{n:,.0f}" if abs(n) >= 1000 else f"{n:.3f}" for n in numbers),
        )
    Console().print(table)


def promote(
    version: Annotated[str, typer.Argument(help="The version number to promote.")],
    alias: Annotated[str, typer.Option(help="champion or challenger.")] = "champion",
    reason: Annotated[str, typer.Option(help="Why (recorded in the alias log).")] = "",
    by: Annotated[str | None, typer.Option(help="Who (default: the OS user).")] = None,
) -> None:
    """Point an alias (champion by default) at a version; the move is recorded.

    Example: fraudctl promote 3 --alias champion --reason "beats v2 on AP"
    """
    from models.registry import CHALLENGER, CHAMPION
    from models.registry import promote as do_promote

    if alias not in (CHAMPION, CHALLENGER):
        raise ValueError(f"--alias must be {CHAMPION} or {CHALLENGER}, got {alias!r}")
    entry = do_promote(get_settings(), version, alias, reason=reason, by=by)
    typer.echo(f"{alias}: version {entry['from'] or '(none)'} → {entry['to']} (by {entry['by']})")


def rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded in the alias log).")] = "manual rollback",
    by: Annotated[str | None, typer.Option(help="Who (default: the OS user).")] = None,
) -> None:
    """Move champion back to the version that held it before; record who, why and when.

    Example: fraudctl rollback --reason "precision dropped after v4"
    """
    from models.registry import rollback as do_rollback

    entry = do_rollback(get_settings(), reason=reason, by=by)
    typer.echo(
        f"champion: version {entry['from']} → {entry['to']} (rolled back by {entry['by']}: {entry['why']})"
    )
