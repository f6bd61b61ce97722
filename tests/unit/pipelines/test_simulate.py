"""The simulator: schema, determinism, each fraud scenario, labels, drift, the dataset on disk, the CLI."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import typer
from typer.testing import CliRunner

from core.dataset import read_labels, read_manifest, read_transactions
from core.events import (
    LABEL_ARROW_SCHEMA,
    LABEL_COLUMNS,
    SCHEMA_VERSION,
    TRANSACTION_ARROW_SCHEMA,
    TRANSACTION_COLUMNS,
    Label,
    Transaction,
)
from pipelines import simulate
from pipelines.simulate import Simulation, SimulationParams, generate

SMALL = {"days": 10, "cards": 500, "merchants": 80}
DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def sim() -> Simulation:
    """A small world with plenty of fraud, so that every scenario has enough rows to measure."""
    return generate(SimulationParams(**SMALL, seed=3, fraud_rate=0.05))


def fraud_of(sim: Simulation, scenario: str) -> pd.DataFrame:
    frame = sim.transactions
    return frame[frame["scenario"] == scenario]


def with_home(frame: pd.DataFrame, sim: Simulation) -> pd.DataFrame:
    return frame.merge(sim.cards[["card_id", "home_country"]], on="card_id", how="left")


# --- determinism and schema -------------------------------------------------------------------


def test_same_arguments_give_identical_frames_and_another_seed_does_not() -> None:
    first = simulate.simulate(**SMALL, seed=11, fraud_rate=0.02)
    again = simulate.simulate(**SMALL, seed=11, fraud_rate=0.02)
    pd.testing.assert_frame_equal(first[0], again[0])
    pd.testing.assert_frame_equal(first[1], again[1])
    other = simulate.simulate(**SMALL, seed=12, fraud_rate=0.02)
    assert not first[0].drop(columns="transaction_id").equals(other[0].drop(columns="transaction_id"))
    assert not first[1]["reported_at"].equals(other[1]["reported_at"])


def test_columns_and_dtypes_are_those_of_the_arrow_schemas(sim: Simulation) -> None:
    for frame, schema, columns in [
        (sim.transactions, TRANSACTION_ARROW_SCHEMA, TRANSACTION_COLUMNS),
        (sim.labels, LABEL_ARROW_SCHEMA, LABEL_COLUMNS),
    ]:
        assert list(frame.columns) == list(columns)
        pd.testing.assert_series_equal(frame.dtypes, schema.empty_table().to_pandas().dtypes)
        pa.Table.from_pandas(frame, schema=schema, preserve_index=False).validate(full=True)
        for field in schema:
            if not field.nullable:
                assert frame[field.name].notna().all(), field.name


def test_rows_are_valid_events(sim: Simulation) -> None:
    txns = sim.transactions
    sample = pd.concat([txns.iloc[::97], txns[txns["scenario"] != "legit"].iloc[::7]])
    for row in sample.drop(columns="scenario").to_dict("records"):
        Transaction(**row)
    for row in sim.labels.iloc[::5].to_dict("records"):
        Label(**row)
    assert (txns["currency"] == "USD").all()
    assert (txns["schema_version"] == SCHEMA_VERSION).all()
    assert txns["customer_id"].str.fullmatch(r"u_\d{6}").all()
    assert txns["merchant_id"].str.fullmatch(r"m_\d{5}").all()
    assert txns["card_id"].str.fullmatch(r"c_\d{6}").all()
    # Some customers hold two cards.
    assert sim.cards.groupby("customer_id").size().max() == 2


def test_ids_are_unique_and_times_strictly_increasing(sim: Simulation) -> None:
    txns, labels = sim.transactions, sim.labels
    assert txns["transaction_id"].is_unique
    assert txns["transaction_id"].tolist() == [f"t_3_{i:09d}" for i in range(len(txns))]
    assert txns["event_time"].diff().iloc[1:].gt(pd.Timedelta(0)).all()
    assert labels["reported_at"].is_unique and labels["reported_at"].is_monotonic_increasing
    assert txns["event_time"].min() >= pd.Timestamp("2026-01-01", tz="UTC")
    assert txns["event_time"].max() < pd.Timestamp("2026-01-01", tz="UTC") + 10 * DAY


def test_equal_times_are_nudged_apart_in_order() -> None:
    # Collisions at microsecond resolution are rare in a small run, so force them.
    params = SimulationParams(**SMALL, seed=1)
    world = simulate.sc.build_world(params.cards, params.merchants, np.random.default_rng(0))
    n = 50
    block = simulate.sc.make_block(
        "legit",
        card=np.arange(n),
        merchant=np.zeros(n),
        time=np.repeat([5_000_000, 1_000_000], n // 2),
        amount=np.full(n, 10.0),
        ecommerce=np.zeros(n, bool),
        device=np.full(n, -1),
        ip=np.full(n, -1),
    )
    txns = simulate._transactions(world, params, [block])
    assert txns["event_time"].diff().iloc[1:].gt(pd.Timedelta(0)).all()
    # Ties keep their original order: the cards drawn at 1 s first, then those drawn at 5 s.
    assert txns["card_id"].tolist() == [f"c_{i:06d}" for i in [*range(25, 50), *range(25)]]


def test_only_online_purchases_carry_device_and_ip(sim: Simulation) -> None:
    txns = sim.transactions
    online = txns["channel"] == "ecommerce"
    assert set(txns["channel"]) == {"ecommerce", "card_present"}
    assert txns.loc[online, ["device_id", "ip_country"]].notna().all().all()
    assert txns.loc[~online, ["device_id", "ip_country"]].isna().all().all()
    legit = with_home(txns[online & (txns["scenario"] == "legit")], sim)
    assert (legit["ip_country"] == legit["home_country"]).mean() > 0.95  # shoppers are mostly at home


# --- fraud volume and scenarios ---------------------------------------------------------------


def test_fraud_rate_and_scenario_shares_follow_the_configuration(sim: Simulation) -> None:
    scenario = sim.transactions["scenario"]
    assert (scenario != "legit").mean() == pytest.approx(0.05, rel=0.1)
    shares = scenario[scenario != "legit"].value_counts(normalize=True)
    for name, share in simulate.sc.DEFAULT_SCENARIO_MIX.items():
        assert shares[name] == pytest.approx(share, abs=0.05), name


def test_a_custom_mix_and_rate_are_honoured() -> None:
    mix = {"card_testing": 0.5, "compromised_card": 0.5}
    txns, _ = simulate.simulate(days=10, cards=1000, merchants=80, seed=5, fraud_rate=0.01, scenario_mix=mix)
    scenario = txns["scenario"]
    assert (scenario != "legit").mean() == pytest.approx(0.01, rel=0.15)
    shares = scenario[scenario != "legit"].value_counts(normalize=True)
    assert set(shares.index) == set(mix)
    assert shares["card_testing"] == pytest.approx(0.5, abs=0.08)


def test_card_testing_is_bursts_of_small_online_attempts_at_digital_goods(sim: Simulation) -> None:
    tests = fraud_of(sim, "card_testing").sort_values(["card_id", "merchant_id", "event_time"])
    assert (tests["channel"] == "ecommerce").all()
    assert tests["amount"].between(0.5, 5.0).all()
    assert (tests["merchant_category"] == "digital_goods").all()
    # A new burst starts where the same card at the same merchant pauses for more than 15 minutes.
    gap = tests.groupby(["card_id", "merchant_id"])["event_time"].diff()
    burst = (gap.isna() | (gap > pd.Timedelta(minutes=15))).cumsum()
    bursts = tests.groupby(burst)["event_time"].agg(["size", "min", "max"])
    assert bursts["size"].between(8, 40).all()
    assert (bursts["max"] - bursts["min"]).le(pd.Timedelta(minutes=15)).all()
    # Each burst comes from one device: the card's own, or (mostly) one no card ever used.
    assert (tests.groupby(burst)["device_id"].nunique() == 1).all()
    legit = sim.transactions[sim.transactions["scenario"] == "legit"]
    own = tests["device_id"].isin(legit.loc[legit["card_id"].isin(tests["card_id"]), "device_id"])
    brand_new = ~tests["device_id"].isin(legit["device_id"])
    assert (own | brand_new).all()


def test_card_testing_mostly_uses_new_devices_and_foreign_ips() -> None:
    # Only card testing, and lots of it, so that shares per burst can be measured.
    params = SimulationParams(
        days=10, cards=1000, merchants=80, seed=2, fraud_rate=0.2, scenario_mix={"card_testing": 1}
    )
    sim = generate(params)
    tests = with_home(fraud_of(sim, "card_testing"), sim).merge(sim.cards[["card_id", "device_ids"]])
    bursts = tests.groupby(["card_id", "device_id"], as_index=False).first()
    assert len(bursts) > 100
    own_device = [
        device in own for device, own in zip(bursts["device_id"], bursts["device_ids"], strict=True)
    ]
    assert 1 - np.mean(own_device) == pytest.approx(0.7, abs=0.12)
    assert (bursts["ip_country"] != bursts["home_country"]).mean() == pytest.approx(0.6, abs=0.12)


def test_account_takeover_comes_from_a_new_device_abroad_with_high_amounts(sim: Simulation) -> None:
    txns = sim.transactions
    takeover = with_home(fraud_of(sim, "account_takeover"), sim)
    assert (takeover["channel"] == "ecommerce").all()
    assert (takeover["ip_country"] != takeover["home_country"]).all()
    assert takeover["merchant_category"].isin(["electronics", "travel"]).all()
    used_before = txns[txns["scenario"] == "legit"].groupby("card_id")["device_id"].agg(set)
    for row in takeover.itertuples():
        assert row.device_id not in used_before.get(row.card_id, set())
    assert not takeover["device_id"].isin(txns.loc[txns["scenario"] == "legit", "device_id"]).any()
    legit_median = txns[txns["scenario"] == "legit"].groupby("card_id")["amount"].median()
    ratio = takeover["amount"].to_numpy() / legit_median.reindex(takeover["card_id"]).to_numpy()
    assert np.nanmedian(ratio) > 5
    # A takeover lasts hours, not days.
    span = takeover.groupby(["card_id", "device_id"])["event_time"].agg(lambda t: t.max() - t.min())
    assert span.le(pd.Timedelta(hours=6)).all()


def test_compromised_merchant_victims_shopped_at_a_breached_merchant_before(sim: Simulation) -> None:
    breaches = sim.compromised_merchants
    assert len(breaches) >= 1
    assert (breaches["window_end"] - breaches["window_start"]).between(DAY, 3 * DAY).all()
    fraud = fraud_of(sim, "compromised_merchant")
    legit = sim.transactions[sim.transactions["scenario"] == "legit"]
    exposures = legit.merge(breaches, on="merchant_id")
    exposures = exposures[exposures["event_time"].between(exposures["window_start"], exposures["window_end"])]
    pairs = fraud.merge(exposures, on="card_id", suffixes=("", "_exposure"))
    pairs = pairs[
        (pairs["event_time_exposure"] < pairs["event_time"])
        & (pairs["merchant_id"] != pairs["merchant_id_exposure"])
        & (pairs["event_time"] <= pairs["window_end"] + 10 * DAY)
    ]
    assert set(fraud["transaction_id"]) == set(pairs["transaction_id"])
    abroad = with_home(fraud, sim)
    abroad = abroad[abroad["channel"] == "card_present"]
    assert len(abroad) > 0.4 * len(fraud)
    assert (abroad["merchant_country"] != abroad["home_country"]).all()


def test_compromised_card_inflates_amounts_over_a_few_days(sim: Simulation) -> None:
    fraud = fraud_of(sim, "compromised_card")
    legit_median = (
        sim.transactions[sim.transactions["scenario"] == "legit"].groupby("card_id")["amount"].median()
    )
    ratio = fraud.groupby("card_id")["amount"].median() / legit_median
    assert ratio.dropna().median() > 3
    span = fraud.groupby("card_id")["event_time"].agg(lambda t: t.max() - t.min())
    assert (span <= 5 * DAY).mean() > 0.9  # a card hit twice may span more


# --- labels -----------------------------------------------------------------------------------


def test_labels_cover_reported_fraud_with_realistic_delays(sim: Simulation) -> None:
    txns, labels = sim.transactions, sim.labels
    fraud = txns[txns["scenario"] != "legit"].set_index("transaction_id")
    assert labels["transaction_id"].is_unique
    assert labels["transaction_id"].isin(fraud.index).all()
    assert labels["is_fraud"].all()
    assert (labels["card_id"].to_numpy() == fraud.loc[labels["transaction_id"], "card_id"].to_numpy()).all()
    delay = labels["reported_at"].to_numpy() - fraud.loc[labels["transaction_id"], "event_time"].to_numpy()
    delay = pd.to_timedelta(delay)
    assert delay.min() >= DAY and delay.max() <= 60 * DAY
    assert pd.Timedelta(days=7) < delay.median() < pd.Timedelta(days=14)
    assert 1 - len(labels) / len(fraud) == pytest.approx(0.05, abs=0.03)
    sources = labels["source"].value_counts(normalize=True)
    assert sources["chargeback"] == pytest.approx(0.85, abs=0.06)
    assert set(sources.index) == {"chargeback", "customer", "analyst"}
    assert labels["reported_at"].max() > txns["event_time"].max()  # reports outlive the period


def test_unreported_share_is_configurable() -> None:
    txns, labels = simulate.simulate(**SMALL, seed=3, fraud_rate=0.05, unreported_share=0.5)
    assert len(labels) / (txns["scenario"] != "legit").sum() == pytest.approx(0.5, abs=0.07)


# --- drift ------------------------------------------------------------------------------------

DRIFT_START = 5
SWITCH = pd.Timestamp("2026-01-01", tz="UTC") + DRIFT_START * DAY


def drifted(drift: str | None) -> pd.DataFrame:
    start = None if drift is None else DRIFT_START
    txns, _ = simulate.simulate(
        days=10, cards=1000, merchants=80, seed=9, fraud_rate=0.02, drift=drift, drift_start=start
    )
    return txns


def legit_amount_ratio(txns: pd.DataFrame) -> float:
    legit = txns[txns["scenario"] == "legit"]
    after = legit["event_time"] >= SWITCH
    return float(legit.loc[after, "amount"].mean() / legit.loc[~after, "amount"].mean())


def test_amount_shift_raises_legit_amounts_by_half_from_drift_start() -> None:
    assert legit_amount_ratio(drifted("amount-shift")) == pytest.approx(simulate.AMOUNT_SHIFT, rel=0.08)
    assert legit_amount_ratio(drifted(None)) == pytest.approx(1.0, abs=0.12)


def test_new_merchant_mix_routes_a_third_of_legit_traffic_to_new_merchants() -> None:
    txns = drifted("new-merchant-mix")
    legit = txns[txns["scenario"] == "legit"]
    new = legit["merchant_id"].str.startswith("m_new_")
    after = legit["event_time"] >= SWITCH
    assert not new[~after].any()
    assert new[after].mean() == pytest.approx(simulate.NEW_MERCHANT_SHARE, abs=0.03)
    assert (legit.loc[new, "merchant_category"] == "crypto").all()
    assert not drifted(None)["merchant_id"].str.startswith("m_new_").any()


def test_new_fraud_pattern_appears_only_from_drift_start() -> None:
    txns = drifted("new-fraud-pattern")
    pattern = txns[txns["scenario"] == "new_pattern"]
    assert len(pattern) > 0.1 * (txns["scenario"] != "legit").sum()
    assert (pattern["event_time"] >= SWITCH).all()
    assert (pattern["channel"] == "card_present").all()
    assert (pattern["event_time"].dt.hour < 6).all()
    assert "new_pattern" not in set(drifted(None)["scenario"])


# --- parameters, run and CLI -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"days": 0}, "days"),
        ({"merchants": 5}, "merchants"),
        ({"fraud_rate": 0.7}, "fraud rate"),
        ({"drift": "amount-shift"}, "drift"),
        ({"drift": "amount-shift", "drift_start": 10}, "drift start"),
        ({"drift": "sideways", "drift_start": 1}, "drift"),
        ({"scenario_mix": {"phishing": 1.0}}, "scenario"),
    ],
)
def test_bad_parameters_are_refused_with_a_reason(overrides: dict, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        simulate.simulate(**{**SMALL, "seed": 1, **overrides})


def test_run_writes_a_dataset_that_reads_back_equal(tmp_path: Path) -> None:
    params = SimulationParams(**SMALL, seed=4, fraud_rate=0.03, start=date(2026, 3, 1))
    manifest = simulate.run(tmp_path / "data", params)
    txns, labels = simulate.simulate(**SMALL, seed=4, fraud_rate=0.03, start=date(2026, 3, 1))
    pd.testing.assert_frame_equal(read_transactions(tmp_path / "data"), txns)
    pd.testing.assert_frame_equal(read_labels(tmp_path / "data"), labels)
    on_disk = read_manifest(tmp_path / "data")
    assert on_disk["source"] == "simulate" and on_disk["seed"] == 4
    assert on_disk["parameters"]["days"] == 10 and on_disk["parameters"]["fraud_rate"] == 0.03
    assert on_disk["scenarios"] == txns["scenario"].value_counts().to_dict()
    assert on_disk["transactions"] == len(txns) == manifest["transactions"]
    assert on_disk["unreported"] == (txns["scenario"] != "legit").sum() - len(labels)
    assert (tmp_path / "data" / "transactions" / "date=2026-03-01" / "part-0.parquet").exists()


def test_run_never_replaces_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a dataset"):
        simulate.run(tmp_path, SimulationParams(**SMALL, seed=1))
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def cli_app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)  # a group, so the command is called by name as in fraudctl
    app.command("simulate")(simulate.cli)
    return app


def test_cli_writes_the_dataset_and_prints_a_summary(tmp_path: Path) -> None:
    args = [
        "simulate",
        "--days",
        "3",
        "--cards",
        "300",
        "--merchants",
        "40",
        "--seed",
        "7",
        "--fraud-rate",
        "0.05",
    ]
    args += [
        "--out",
        str(tmp_path / "d"),
        "--drift",
        "amount-shift",
        "--drift-start",
        "1",
        "--start",
        "2026-02-01",
    ]
    result = CliRunner().invoke(cli_app(), args)
    assert result.exit_code == 0, result.output
    assert "transactions" in result.output and "card_testing" in result.output
    manifest = read_manifest(tmp_path / "d")
    assert manifest["parameters"]["drift"] == "amount-shift"
    assert manifest["parameters"]["start"] == "2026-02-01"


@pytest.mark.parametrize(
    "args",
    [
        ["--days", "0"],
        ["--drift", "amount-shift"],
        ["--drift-start", "3"],
        ["--drift", "sideways", "--drift-start", "1"],
    ],
)
def test_cli_exits_non_zero_on_bad_arguments(tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(cli_app(), ["simulate", "--out", str(tmp_path / "d"), *args])
    assert result.exit_code != 0
    assert not (tmp_path / "d").exists()
