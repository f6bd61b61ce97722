"""Simulate card transactions with labelled fraud, so every later stage has data to learn from.

Real fraud data is scarce and private. The simulator gives the system a reproducible
stand-in whose ground truth is known: each transaction carries the ``scenario`` that
made it (never a model feature), labels arrive with realistic chargeback delays (some
never), and a ``drift`` switch changes the world from a given day, so that monitoring
has something to find.

    fraudctl simulate --days 30 --cards 5000 --seed 7 --out var/data

Legitimate activity is drawn one day at a time, vectorised over cards; fraud scenarios
live in ``simulate_scenarios.py``. Only ``np.random.default_rng`` streams derived from the
seed are used, one per stage and day, so the same arguments give the same data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from core.dataset import MANIFEST, make_timestamps_unique, write_dataset
from core.events import LEGIT_SCENARIO, SCHEMA_VERSION
from core.settings import get_settings
from pipelines import simulate_scenarios as sc

DRIFTS = ("amount-shift", "new-merchant-mix", "new-fraud-pattern")
# Legit amounts are multiplied by this under "amount-shift". 1.5 moved amount_log by PSI ~0.15
# (measured in the drill), under the 0.2 that conventionally marks a real shift.
AMOUNT_SHIFT = 2.0
# Share of legit traffic routed to new merchants under "new-merchant-mix". At 0.3 no alarmed
# feature crossed PSI 0.2 in the drill world (channel and device mix <= 0.17, measured); at 0.5
# the channel, device and amount features do (0.23-0.44), in 72 h.
NEW_MERCHANT_SHARE = 0.5
PREFERRED_SHARE = 0.6  # share of a card's purchases at its handful of favourite merchants
WEEKDAY_FACTOR = np.array([0.95, 0.95, 1.0, 1.0, 1.15, 1.15, 0.8])  # Monday first
LABEL_SOURCES = np.array(["chargeback", "customer", "analyst"], dtype=object)
LABEL_SOURCE_WEIGHT = [0.85, 0.10, 0.05]


@dataclass(frozen=True)
class SimulationParams:
    """Everything that determines a simulated dataset (it goes into the manifest)."""

    days: int
    cards: int
    merchants: int
    seed: int
    start: date = date(2026, 1, 1)
    fraud_rate: float = 0.005
    scenario_mix: dict[str, float] = field(default_factory=lambda: dict(sc.DEFAULT_SCENARIO_MIX))
    drift: str | None = None
    drift_start: int | None = None
    unreported_share: float = 0.05
    # "new-fraud-pattern": its fraud, as a share of the configured fraud (0.25: a quarter more).
    new_pattern_share: float = sc.NEW_PATTERN_SHARE

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line reason for the first bad parameter."""
        checks = [
            (self.days >= 1, f"days must be at least 1, got {self.days}"),
            (self.cards >= 1, f"cards must be at least 1, got {self.cards}"),
            (self.merchants >= 10, f"merchants must be at least 10 (one per category), got {self.merchants}"),
            (self.seed >= 0, f"seed must be non-negative, got {self.seed}"),
            (0 <= self.fraud_rate < 0.5, f"fraud rate must be in [0, 0.5), got {self.fraud_rate}"),
            (
                0 <= self.unreported_share <= 1,
                f"unreported share must be in [0, 1], got {self.unreported_share}",
            ),
            (
                set(self.scenario_mix) <= set(sc.DEFAULT_SCENARIO_MIX),
                f"unknown scenario in {self.scenario_mix}",
            ),
            (
                min(self.scenario_mix.values(), default=-1) >= 0 and sum(self.scenario_mix.values()) > 0,
                "scenario mix needs non-negative shares with a positive sum",
            ),
            (self.drift in (None, *DRIFTS), f"drift must be one of {', '.join(DRIFTS)}, got {self.drift}"),
            ((self.drift is None) == (self.drift_start is None), "drift and drift start go together"),
            (
                self.drift_start is None or 0 <= self.drift_start < self.days,
                f"drift start must be a day index in [0, {self.days}), got {self.drift_start}",
            ),
            (
                0 <= self.new_pattern_share <= 5,
                f"new pattern share must be in [0, 5], got {self.new_pattern_share}",
            ),
        ]
        for ok, reason in checks:
            if not ok:
                raise ValueError(reason)


@dataclass(frozen=True)
class Simulation:
    """The simulated dataset plus the ground truth that is not in it."""

    transactions: pd.DataFrame
    labels: pd.DataFrame
    cards: pd.DataFrame  # card_id, customer_id, home_country, device_ids (the card holder's own)
    compromised_merchants: pd.DataFrame  # merchant_id, window_start, window_end (first/last day, UTC)


def _legit_day(world: sc.World, params: SimulationParams, day: int, rng: np.random.Generator) -> sc.Block:
    """One day of every card's ordinary purchases."""
    weekday = (params.start.toordinal() + day - 1) % 7  # date.toordinal() 1 is a Monday
    card = np.repeat(np.arange(world.cards), rng.poisson(world.daily_rate * WEEKDAY_FACTOR[weekday]))
    n = len(card)
    hour = np.mod(world.peak_hour[card] + world.hour_spread[card] * rng.standard_normal(n), 24.0)
    favourite = world.preferred[card, rng.integers(0, world.preferred.shape[1], n)]
    merchant = np.where(
        rng.random(n) < PREFERRED_SHARE, favourite, world.pickers["home"].pick(world.home[card], rng)
    )
    drifted = params.drift_start is not None and day >= params.drift_start
    if drifted and params.drift == "new-merchant-mix":
        routed = rng.random(n) < NEW_MERCHANT_SHARE
        merchant[routed] = world.pickers["new"].pick(0, rng, int(routed.sum()))
    # Pure online merchants stay online (share 1), gas stations stay offline (share 0).
    ecommerce = rng.random(n) < world.merchant_ecommerce[merchant] ** (1.0 / world.ecommerce_affinity[card])
    second_device = (world.device_count[card] == 2) & (rng.random(n) < 0.3)
    travelling = rng.random(n) < 0.02
    ip = np.where(travelling, sc.foreign_country(world.home[card], rng), world.home[card])
    amount = world.typical_amount(card, merchant) * np.exp(world.sigma[card] * rng.standard_normal(n))
    if drifted and params.drift == "amount-shift":
        amount *= AMOUNT_SHIFT
    return sc.make_block(
        "legit",
        card=card,
        merchant=merchant,
        ecommerce=ecommerce,
        time=day * sc.DAY_US + (hour * sc.HOUR_US).astype(np.int64),
        amount=np.round(amount, 2),
        device=np.where(ecommerce, world.device_base[card] + second_device, -1),
        ip=np.where(ecommerce, ip, -1),
    )


def _fraud(
    world: sc.World, params: SimulationParams, legit: sc.Block, rng: np.random.Generator
) -> tuple[list[sc.Block], list[tuple[int, int, int]]]:
    """Every fraud scenario, sized from the legit volume so that fraud / all ≈ fraud_rate."""
    total = params.fraud_rate * len(legit["card"]) / (1.0 - params.fraud_rate)
    shares = {name: share / sum(params.scenario_mix.values()) for name, share in params.scenario_mix.items()}
    target = {name: total * shares.get(name, 0.0) for name in sc.DEFAULT_SCENARIO_MIX}
    period_us = params.days * sc.DAY_US
    devices = sc.DeviceIssuer(world.devices)
    blocks = [
        sc.card_testing(world, rng, target["card_testing"], period_us, devices),
        sc.account_takeover(world, rng, target["account_takeover"], period_us, devices),
        sc.compromised_card(world, rng, target["compromised_card"], period_us, devices),
    ]
    breach_fraud, breaches = sc.compromised_merchant(
        world, rng, target["compromised_merchant"], legit, params.days, devices
    )
    blocks.append(breach_fraud)
    if params.drift == "new-fraud-pattern" and params.drift_start is not None:
        drifted_days = params.days - params.drift_start
        volume = total * params.new_pattern_share * drifted_days / params.days
        blocks.append(sc.new_pattern(world, rng, volume, params.drift_start, params.days))
    return blocks, breaches


def _transactions(world: sc.World, params: SimulationParams, blocks: list[sc.Block]) -> pd.DataFrame:
    """Concatenate the blocks, order them by (unique) time and spell out ids and names."""
    column = {name: np.concatenate([block[name] for block in blocks]) for name in sc.BLOCK_DTYPES}
    order = np.argsort(column["time"], kind="stable")
    column = {name: values[order] for name, values in column.items()}
    start_us = int(datetime.combine(params.start, datetime.min.time(), UTC).timestamp()) * 1_000_000
    event_time = make_timestamps_unique(
        pd.Series(pd.to_datetime(column["time"] + start_us, unit="us", utc=True))
    )
    card, merchant = column["card"], column["merchant"]
    devices = max(world.devices, int(column["device"].max(initial=0)) + 1)
    # Index -1 (no device, no IP) lands on the trailing None of these vocabularies.
    device_names = np.array([f"d_{i:07d}" for i in range(devices)] + [None], dtype=object)
    countries = np.array([*sc.COUNTRIES, None], dtype=object)
    n = len(card)
    return pd.DataFrame(
        {
            "transaction_id": np.array([f"t_{params.seed}_{i:09d}" for i in range(n)], dtype=object),
            "event_time": event_time.dt.as_unit("us"),
            "card_id": np.array([f"c_{i:06d}" for i in range(world.cards)], dtype=object)[card],
            "customer_id": np.array([f"u_{i:06d}" for i in range(world.customer[-1] + 1)], dtype=object)[
                world.customer[card]
            ],
            "merchant_id": world.merchant_ids[merchant],
            "merchant_category": np.array(sc.CATEGORIES, dtype=object)[world.merchant_category[merchant]],
            "merchant_country": countries[world.merchant_country[merchant]],
            "channel": np.array(["card_present", "ecommerce"], dtype=object)[
                column["ecommerce"].astype(np.int8)
            ],
            "device_id": device_names[column["device"]],
            "ip_country": countries[column["ip"]],
            "amount": np.clip(column["amount"], 0.5, 100_000.0),
            "currency": np.full(n, "USD", dtype=object),
            "schema_version": np.full(n, SCHEMA_VERSION, dtype=np.int32),
            "scenario": np.array(sc.SCENARIOS, dtype=object)[column["scenario"]],
        }
    )


def _labels(transactions: pd.DataFrame, unreported_share: float, rng: np.random.Generator) -> pd.DataFrame:
    """Fraud verdicts arriving 1-60 days later (median ~10), some never."""
    fraud = transactions[transactions["scenario"] != LEGIT_SCENARIO]
    fraud = fraud[rng.random(len(fraud)) >= unreported_share]
    delay_days = np.exp(np.log(10.0) + 0.75 * rng.standard_normal(len(fraud)))
    # The upper bound stays a millisecond short of 60 days: making times unique may add microseconds.
    delay_us = np.clip(delay_days * sc.DAY_US, sc.DAY_US, 60 * sc.DAY_US - 1000).astype(np.int64)
    reported_at = fraud["event_time"] + pd.to_timedelta(delay_us, unit="us")
    labels = pd.DataFrame(
        {
            "transaction_id": fraud["transaction_id"].to_numpy(),
            "card_id": fraud["card_id"].to_numpy(),
            "is_fraud": np.ones(len(fraud), dtype=bool),
            "reported_at": make_timestamps_unique(reported_at.reset_index(drop=True)).dt.as_unit("us"),
            "source": rng.choice(LABEL_SOURCES, len(fraud), p=LABEL_SOURCE_WEIGHT),
        }
    )
    return labels.sort_values("reported_at", kind="stable", ignore_index=True)


def generate(params: SimulationParams, progress: bool = False) -> Simulation:
    """Simulate a dataset and keep the ground truth (home countries, breached merchants).

    Args:
        params: What to simulate; validated first.
        progress: Show a rich progress bar, one step per simulated day.

    Returns:
        The transactions and labels (as ``simulate`` returns them) plus the ground truth.

    Raises:
        ValueError: A parameter is out of range, with a one-line reason.
    """
    params.validate()
    world_seed, legit_seed, new_merchant_seed, fraud_seed, label_seed = np.random.SeedSequence(
        params.seed
    ).spawn(5)
    world = sc.build_world(params.cards, params.merchants, np.random.default_rng(world_seed))
    if params.drift == "new-merchant-mix":  # own stream: the old world is the same with or without drift
        count = max(5, params.merchants // 10)
        sc.add_new_merchants(world, count, np.random.default_rng(new_merchant_seed))
    day_rngs = [np.random.default_rng(s) for s in legit_seed.spawn(params.days)]
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("simulating days", total=params.days)
        legit_days = []
        for day, rng in enumerate(day_rngs):
            legit_days.append(_legit_day(world, params, day, rng))
            bar.advance(task)
    legit = {name: np.concatenate([block[name] for block in legit_days]) for name in sc.BLOCK_DTYPES}
    fraud_blocks, breaches = _fraud(world, params, legit, np.random.default_rng(fraud_seed))
    transactions = _transactions(world, params, [legit, *fraud_blocks])
    labels = _labels(transactions, params.unreported_share, np.random.default_rng(label_seed))
    start = pd.Timestamp(params.start, tz="UTC")
    breach_frame = pd.DataFrame(
        {
            "merchant_id": [world.merchant_ids[m] for m, _, _ in breaches],
            "window_start": [start + pd.Timedelta(days=first) for _, first, _ in breaches],
            "window_end": [start + pd.Timedelta(days=last + 1) for _, _, last in breaches],
        }
    )
    cards = pd.DataFrame(
        {
            "card_id": [f"c_{i:06d}" for i in range(world.cards)],
            "customer_id": [f"u_{i:06d}" for i in world.customer],
            "home_country": np.array(sc.COUNTRIES, dtype=object)[world.home],
            "device_ids": [
                tuple(f"d_{d:07d}" for d in range(first, first + count))
                for first, count in zip(world.device_base, world.device_count, strict=True)
            ],
        }
    )
    return Simulation(transactions, labels, cards, breach_frame)


def simulate(
    days: int,
    cards: int,
    merchants: int,
    seed: int,
    start: date = date(2026, 1, 1),
    fraud_rate: float = 0.005,
    scenario_mix: dict[str, float] | None = None,
    drift: str | None = None,
    drift_start: int | None = None,
    unreported_share: float = 0.05,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate ``days`` of card transactions with fraud and the labels reported for it.

    Args:
        days: Number of simulated days, from ``start`` (UTC midnight).
        cards: Number of cards (a customer holds one or two).
        merchants: Number of merchants (at least 10).
        seed: The only source of randomness: the same arguments give identical frames.
        start: First simulated day.
        fraud_rate: Fraud transactions / all transactions, before any "new-fraud-pattern".
        scenario_mix: Share of fraud transactions per scenario; defaults to
            ``simulate_scenarios.DEFAULT_SCENARIO_MIX``.
        drift: "amount-shift", "new-merchant-mix" or "new-fraud-pattern", from ``drift_start`` on.
        drift_start: Day index (0-based) the drift starts on; required with ``drift``.
        unreported_share: Share of fraud transactions that never get a label.
        progress: Show a progress bar by day.

    Returns:
        ``(transactions, labels)`` with the columns and dtypes of the arrow schemas in
        ``core.events``; transactions sorted by ``event_time``, labels by ``reported_at``.

    Raises:
        ValueError: A parameter is out of range, with a one-line reason.
    """
    mix = dict(sc.DEFAULT_SCENARIO_MIX) if scenario_mix is None else dict(scenario_mix)
    params = SimulationParams(
        days=days,
        cards=cards,
        merchants=merchants,
        seed=seed,
        start=start,
        fraud_rate=fraud_rate,
        scenario_mix=mix,
        drift=drift,
        drift_start=drift_start,
        unreported_share=unreported_share,
    )
    simulation = generate(params, progress=progress)
    return simulation.transactions, simulation.labels


def run(out: Path, params: SimulationParams, progress: bool = False) -> dict[str, Any]:
    """Simulate and write the dataset to ``out`` (replacing a previous dataset there).

    Args:
        out: Dataset folder; must be absent, empty or an earlier dataset.
        params: What to simulate.
        progress: Show a progress bar by day.

    Returns:
        The manifest written next to the data (parameters, seed, counts per scenario).

    Raises:
        ValueError: Bad parameters, or ``out`` holds something that is not a dataset.
    """
    params.validate()
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).exists())):
        # write_dataset replaces `out` wholesale: never do that to a folder we did not write.
        raise ValueError(f"{out} exists and is not a dataset; choose another --out")
    simulation = generate(params, progress=progress)
    transactions, labels = simulation.transactions, simulation.labels
    fraud = int((transactions["scenario"] != LEGIT_SCENARIO).sum())
    manifest: dict[str, Any] = {
        "source": "simulate",
        "command": "simulate",
        "parameters": asdict(params),
        "seed": params.seed,
        "period": {"start": params.start, "end_exclusive": params.start + timedelta(days=params.days)},
        "cards": params.cards,
        "scenarios": {k: int(v) for k, v in transactions["scenario"].value_counts().items()},
        "fraud_transactions": fraud,
        "fraud_rate": fraud / max(1, len(transactions)),
        "unreported": fraud - len(labels),
        "compromised_merchants": simulation.compromised_merchants["merchant_id"].tolist(),
    }
    write_dataset(out, transactions, labels, manifest)
    return {**manifest, "transactions": len(transactions), "labels": len(labels)}


class Drift(StrEnum):
    """The --drift choices (typer shows them in --help)."""

    amount_shift = "amount-shift"
    new_merchant_mix = "new-merchant-mix"
    new_fraud_pattern = "new-fraud-pattern"


def cli(
    days: Annotated[
        int | None, typer.Option(help="Days to simulate.", show_default="FRAUD_DEMO_DAYS or 42")
    ] = None,
    cards: Annotated[
        int | None, typer.Option(help="Number of cards.", show_default="FRAUD_DEMO_CARDS or 2000")
    ] = None,
    merchants: Annotated[
        int | None,
        typer.Option(help="Number of merchants, at least 10.", show_default="FRAUD_DEMO_MERCHANTS or 300"),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Random seed; same arguments, same data.", show_default="FRAUD_DEMO_SEED or 7"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Dataset folder.", show_default="FRAUD_VAR_DIR/data")
    ] = None,
    fraud_rate: Annotated[float, typer.Option(help="Fraud transactions / all transactions.")] = 0.005,
    drift: Annotated[Drift | None, typer.Option(help="Change the world from --drift-start on.")] = None,
    drift_start: Annotated[int | None, typer.Option(help="Day index (0-based) the drift starts on.")] = None,
    start: Annotated[
        datetime,
        typer.Option(formats=["%Y-%m-%d"], help="First simulated day (UTC).", show_default="2026-01-01"),
    ] = datetime(2026, 1, 1),
) -> None:
    """Simulate card transactions with labelled fraud and write them as a dataset.

    Example: fraudctl simulate --days 30 --cards 5000 --seed 7 --out var/data
    """
    settings = get_settings()
    params = SimulationParams(
        days=settings.demo_days if days is None else days,
        cards=settings.demo_cards if cards is None else cards,
        merchants=settings.demo_merchants if merchants is None else merchants,
        seed=settings.demo_seed if seed is None else seed,
        start=start.date(),
        fraud_rate=fraud_rate,
        drift=None if drift is None else drift.value,
        drift_start=drift_start,
    )
    out = settings.demo_data_dir if out is None else out
    try:
        manifest = run(out, params, progress=True)
    except ValueError as error:
        Console(stderr=True).print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console = Console()
    console.print(_summary(manifest))
    console.print(f"wrote {out}", highlight=False, soft_wrap=True)


def _summary(manifest: dict[str, Any]) -> Table:
    """The few numbers worth a glance after a run."""
    table = Table(title="simulated dataset", show_header=False)
    table.add_row("transactions", f"{manifest['transactions']:,}")
    table.add_row("cards", f"{manifest['cards']:,}")
    table.add_row("fraud rate", f"{manifest['fraud_rate']:.3%}")
    for scenario, count in manifest["scenarios"].items():
        table.add_row(f"  {scenario}", f"{count:,}")
    table.add_row("labels", f"{manifest['labels']:,}")
    table.add_row("unreported fraud", f"{manifest['unreported']:,}")
    return table
