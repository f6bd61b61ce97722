"""`fraudctl features`: what the online store holds now for a card (and a merchant and device)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from core.settings import get_settings


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "—"
    if isinstance(value, float):
        return f"{value:,.4f}"
    return str(value)


def _when(us: Any) -> str:
    return (
        datetime.fromtimestamp(int(us) / 1e6, tz=UTC).isoformat(timespec="seconds") if us is not None else "—"
    )


def cli(
    card: Annotated[str, typer.Option("--card", help="Card id to look up, e.g. c_000042.")],
    merchant: Annotated[str | None, typer.Option("--merchant", help="Also show this merchant.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="Also show this device.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print the feature snapshots the online store holds now.

    Example: fraudctl features --card c_000042 --merchant m_00007
    """
    from feature_repo.store import open_store, read_online  # Feast is slow to import

    snapshots = read_online(open_store(get_settings()), card, merchant, device)
    if as_json:
        typer.echo(json.dumps(snapshots, default=str, indent=2))
        return
    console = Console()
    if snapshots["card"] is None:
        typer.echo(
            f"error: the online store holds nothing for card {card} (run `fraudctl backfill`?)", err=True
        )
        raise typer.Exit(1)
    for entity, snapshot in snapshots.items():
        if snapshot is None:
            continue
        table = Table(title=f"{entity} online features", show_header=True)
        table.add_column("feature")
        table.add_column("value", justify="right")
        for name, value in snapshot.items():
            if name.endswith("_at_us"):
                shown = _when(value)
            elif name.endswith("_last_seen_us"):
                shown = ", ".join(_when(v) for v in value) or "—"
            else:
                shown = _show(value)
            table.add_row(name, shown)
        console.print(table)
