"""`fraudctl demo`: every stage that exists so far, end to end, on the embedded profile.

Each later stage (stream, train, serve, monitor) adds its step here, so `make demo`
always shows the whole system as far as it is built.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console

from core.dataset import read_transactions
from core.settings import get_settings
from pipelines import simulate
from pipelines.backfill import backfill
from pipelines.online_features import cli as show_features


def cli(
    days: Annotated[int | None, typer.Option(help="Days to simulate (default: settings.demo_days).")] = None,
    cards: Annotated[
        int | None, typer.Option(help="Cards to simulate (default: settings.demo_cards).")
    ] = None,
) -> None:
    """Simulate → backfill → features → stream a day → train → serve and load-test → a drift drill.

    Example: fraudctl demo --days 42 --cards 2000
    """
    settings = get_settings()
    console = Console()
    data_dir = settings.demo_data_dir
    from feature_repo.store import open_store, read_online, scoring_service  # Feast is slow to import

    console.rule("[bold]1. simulate transactions, fraud scenarios and delayed chargebacks")
    params = simulate.SimulationParams(
        days=days or settings.demo_days,
        cards=cards or settings.demo_cards,
        merchants=settings.demo_merchants,
        seed=settings.demo_seed,
    )
    # Step 7's drill builds a world of its own and trains its champion: that runs now, in a
    # process of its own on the other core, and is done before step 6 measures latency.
    from monitoring.drill import DrillWorld, prepare_drift_in_background

    drill_world = DrillWorld()
    ahead = prepare_drift_in_background("amount-shift", settings, drill_world)
    started = time.perf_counter()
    manifest = simulate.run(data_dir, params, progress=True)
    console.print(simulate._summary(manifest))
    console.print(f"wrote {data_dir} in {time.perf_counter() - started:.1f}s")

    console.rule("[bold]2. backfill features into Feast (offline parquet → online SQLite)")
    # The last day stays out of the online store: step 6 sends it to the service, which then
    # scores each card against the history it had, as it would have live.
    result = backfill(data_dir, settings, progress=True, hold_back_days=1)
    cut = result.online_as_of
    assert cut is not None
    rows = ", ".join(f"{view} {n:,}" for view, n in result.snapshot_rows.items())
    console.print(f"snapshot rows: {rows}, in {result.seconds:.1f}s")
    console.print(
        f"online store as of {cut:%Y-%m-%d %H:%M} UTC: the last day's transactions are held back "
        "for step 6 (the offline store, which training reads, holds everything)"
    )

    console.rule("[bold]3. online features of a sample card")
    transactions = read_transactions(data_dir)
    # A card that was hit by card testing makes the most telling sample.
    known = transactions[transactions["event_time"] <= cut]  # what the online store has seen
    fraud = known[known["scenario"] == "card_testing"]
    sample = (fraud if not fraud.empty else known).iloc[-1]
    device = sample["device_id"] if isinstance(sample["device_id"], str) else None
    store = open_store(settings)
    service = scoring_service(store)
    read_online(store, sample["card_id"], sample["merchant_id"], device, service)  # warm-up
    started = time.perf_counter()
    read_online(store, sample["card_id"], sample["merchant_id"], device, service)
    console.print(f"online read of card + merchant + device: {(time.perf_counter() - started) * 1e3:.1f} ms")
    console.print(
        f"The online store is as of {cut:%Y-%m-%d %H:%M} UTC: each card's row is the one written at "
        "its latest transaction before then, each merchant's the one written at that midnight."
    )
    show_features(card=sample["card_id"], merchant=sample["merchant_id"], device=device, as_json=False)

    console.rule("[bold]4. stream: broker → stream processor → replay a day → fresh features")
    import threading

    from pipelines.broker import EmbeddedBroker
    from pipelines.replay import replay
    from pipelines.stream import StreamProcessor, summary_table

    first_day = transactions["event_time"].dt.floor("D").iloc[0]
    day_count = int((transactions["event_time"].dt.floor("D") == first_day).sum())
    # A free port and a store of its own, so the demo never collides with a running
    # `fraudctl broker` and the backfilled store above stays as it is.
    stream_settings = settings.model_copy(
        update={"var_dir": settings.var_dir / "demo_stream", "feast_project": "fraud_demo_stream"}
    )
    with EmbeddedBroker(stream_settings, bootstrap="127.0.0.1:0") as broker:
        processor = StreamProcessor(broker.settings, commit_interval_s=1.0)
        result_box: list = []
        worker = threading.Thread(target=lambda: result_box.append(processor.run(idle_exit_s=4)))
        worker.start()
        while not processor.positions and not processor.consumer.assignment():
            time.sleep(0.2)  # the group join takes a few seconds on Tansu
        published = replay(data_dir, broker.settings, rps=0, limit=day_count, progress=True)
        worker.join()
    if published.failed:
        raise RuntimeError(f"replay: {published.failed} sends failed ({published.first_error})")
    console.print(summary_table(result_box[0]))
    console.print(
        f"published {published.transactions:,} transactions and {published.labels:,} labels "
        f"in {published.seconds:.1f}s ({published.achieved_rps:,.0f}/s); freshness = publish → "
        "readable online, for the card view (one hop) and the device view (two hops)."
    )

    console.rule("[bold]5. train LightGBM and the MLP, register them: champion and challenger")
    from pipelines.train import demo_step

    demo_step(settings, data_dir, console)

    ahead.join()  # before step 6: its load test has the machine to itself
    console.rule("[bold]6. serve: replay with --score, load test at 500 req/s, canary, kill switch")
    from services.serve import demo_step as serve_demo_step

    serve_demo_step(settings, data_dir, console, cut)

    console.rule("[bold]7. the loop: amount-shift drill → alarm → retrain → canary → promote")
    from monitoring.drill import run_drift
    from monitoring.drill import summary_table as drill_table

    if ahead.exitcode != 0:  # it builds them itself, then; the log says what went wrong
        console.print(f"(the drill's world was not prepared ahead, exit {ahead.exitcode}: see var/logs/)")
    report = run_drift(
        "amount-shift", settings, drill_world, console.print, until="settled", prepared=ahead.exitcode == 0
    )
    console.print(drill_table(report))
