"""Three claims of the scoring service that no other test backed, each tested where it can fail.

1. "A version that fails to load never replaces a working one" (`services/scoring/models.py`):
   a registered version whose ONNX file is truncated is made champion; neither the admin
   reload nor the alias poller swaps it in, and the poller does not retry it every interval.
2. The hard rules (`services/scoring/rules.py`) set a floor under the model, end to end through
   `/v1/score`: each case is a transaction the model approves, and the rule alone changes it.
3. The canary is sticky across processes: `in_canary` buckets a card the same in two
   interpreters with different hash seeds.

The services are the real ones (uvicorn, Feast's SQLite online store, an MLflow registry, ONNX
Runtime), on a copy of the session's trained registry and store (`training_side`, conftest.py):
moving the champion alias here leaves the skew tests' registry alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from core.dataset import read_transactions
from core.settings import PROJECT_ROOT, Settings
from models import registry
from tests.integration.scoring_support import (
    ADMIN,
    as_body,
    running_service,
    scraped_metrics,
    service_settings,
)
from tests.integration.skew_support import TrainingSide

# --- 3. canary stickiness across processes ---------------------------------------------------

CANARY_PERCENTS = (5.0, 30.0)
_BUCKETS = """
import json
from services.scoring.scorer import in_canary

cards = [f"c_{i:06d}" for i in range(2_000)] + [f"card-{i * 7919:x}" for i in range(500)]
print(json.dumps({percent: [in_canary(card, percent) for card in cards] for percent in %r}))
"""


def _canary_buckets(hash_seed: str) -> dict[str, list[bool]]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-c", _BUCKETS % (CANARY_PERCENTS,)],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout))


def test_canary_buckets_are_the_same_in_processes_with_different_hash_seeds() -> None:
    """Claim: the canary is sticky by card (`in_canary`), across processes and restarts.

    Several scoring processes serve one canary; a card must land on the same side in each.
    Python's `hash()` of a str changes with PYTHONHASHSEED, so a bucket built on it agrees
    with itself within one process (what the unit test checks) but not between two of these.
    """
    first, second = _canary_buckets("1"), _canary_buckets("2")
    for percent in CANARY_PERCENTS:
        a, b = first[str(percent)], second[str(percent)]
        assert a == b, f"{sum(x != y for x, y in zip(a, b, strict=True))} cards change side at {percent}%"
        share = sum(a) / len(a)
        assert abs(share - percent / 100) < 0.025, (percent, share)


# --- shared by 1 and 2: a copy of the trained registry and store -----------------------------


def _failed_reloads(client: httpx.Client) -> float:
    return scraped_metrics(client).get("fraud_model_reloads_total{outcome=failed}", 0.0)


def _wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def base(training_side: TrainingSide, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings on a copy of the trained MLflow database and Feast store (artifacts are read
    where training wrote them). The prediction log is off: it is not under test here, and its
    writer process would add seconds to every service start."""
    var = tmp_path_factory.mktemp("claims") / "var"
    var.mkdir()
    trained = training_side.settings
    shutil.copy(trained.var_dir / "mlflow.db", var / "mlflow.db")
    shutil.copytree(trained.feast_dir, var / "feast")
    settings = Settings(profile="embedded", var_dir=var, prediction_log=False)
    assert settings.mlflow_tracking_uri == f"sqlite:///{var / 'mlflow.db'}"
    return settings


@pytest.fixture(scope="module")
def champion(base: Settings) -> str:
    version = registry.current_version(registry.connect(base), registry.CHAMPION)
    assert version is not None
    return version


# --- 1. a version that fails to load never replaces a working one ----------------------------


@pytest.fixture(scope="module")
def broken_version(base: Settings, champion: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A registered version whose ONNX file is cut in half (an interrupted upload): the
    champion's files copied, the graph truncated, registered through MLflow's own client."""
    good = registry.load_version(base, version=champion)
    folder = tmp_path_factory.mktemp("broken-model") / "model"
    shutil.copytree(good.folder, folder)
    graph = next(folder.glob("*.onnx"))
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    version = registry.connect(base).create_model_version(registry.MODEL_NAME, source=folder.as_uri())
    return str(version.version)


@pytest.fixture
def alias_restored(base: Settings, champion: str) -> Iterator[None]:
    yield
    registry.promote(base, champion, registry.CHAMPION, reason="test cleanup", by="tests")


@pytest.fixture(scope="module")
def body(training_side: TrainingSide) -> dict[str, Any]:
    frame = read_transactions(training_side.data_dir).drop(columns=["scenario"])
    return as_body(frame.iloc[len(frame) // 2].to_dict())


@pytest.mark.slow
def test_admin_reload_keeps_the_working_champion_when_the_new_one_is_broken(
    base: Settings, champion: str, broken_version: str, body: dict[str, Any], alias_restored: None
) -> None:
    """Claim: a version that fails to load never replaces a working one; the reload says so.

    The champion alias moves to a version whose ONNX file is truncated, then an operator
    reloads: the answer names the failure, and the old version goes on deciding.
    """
    with running_service(service_settings(base, prediction_log=False)) as client:
        before = client.post("/v1/score", json=body).json()
        assert before["served_by"] == "champion" and before["model_version"] == champion, before
        failed_before = _failed_reloads(client)

        registry.promote(base, broken_version, registry.CHAMPION, reason="broken on purpose", by="tests")
        reload = client.post("/admin/reload", headers=ADMIN)

        assert reload.status_code == 200, reload.text
        answer = reload.json()
        assert answer["champion"] == champion, answer
        assert answer["errors"]["champion"].startswith(f"version {broken_version} failed to load: "), answer
        assert "DecodeError" in answer["errors"]["champion"], answer  # the reason, not just "failed"
        assert _failed_reloads(client) == failed_before + 1
        model = client.get("/v1/model").json()
        assert model["champion"]["version"] == champion
        assert model["errors"]["champion"] == answer["errors"]["champion"]
        assert client.get("/readyz").status_code == 200  # a champion still serves

        after = client.post("/v1/score", json=body).json()
        assert after["served_by"] == "champion" and after["model_version"] == champion, after
        assert after["score"] == before["score"] and after["decision"] == before["decision"]


@pytest.mark.slow
def test_the_alias_poller_keeps_the_champion_and_tries_a_broken_version_once(
    base: Settings, champion: str, broken_version: str, body: dict[str, Any], alias_restored: None
) -> None:
    """Claims: the poller never swaps in a version that fails to load, and it does not retry
    that version every interval (an error log, a download and a failed reload each time, for
    ever) — only once the alias moves again. Moving the alias back to the served version
    clears the error it reported.
    """
    interval = 0.2
    settings = service_settings(base, prediction_log=False, registry_poll_seconds=interval)
    with running_service(settings) as client:

        def champion_error() -> str | None:
            error: str | None = client.get("/v1/model").json()["errors"].get("champion")
            return error

        def serves_the_old_champion() -> None:
            out = client.post("/v1/score", json=body).json()
            assert out["served_by"] == "champion" and out["model_version"] == champion, out

        failed = _failed_reloads(client)
        registry.promote(base, broken_version, registry.CHAMPION, reason="broken on purpose", by="tests")
        _wait_for("the poller to try the broken version", lambda: champion_error() is not None)
        error = champion_error()
        assert error is not None and error.startswith(f"version {broken_version} failed to load"), error
        serves_the_old_champion()

        time.sleep(12 * interval)  # a dozen polls: the alias still names the broken version
        assert _failed_reloads(client) == failed + 1, "the poller retried a version that failed"
        serves_the_old_champion()

        registry.promote(base, champion, registry.CHAMPION, reason="back", by="tests")
        _wait_for("the poller to clear the error", lambda: champion_error() is None)
        assert _failed_reloads(client) == failed + 1
        serves_the_old_champion()

        registry.promote(base, broken_version, registry.CHAMPION, reason="broken again", by="tests")
        _wait_for("the poller to try again once the alias moved", lambda: champion_error() is not None)
        time.sleep(6 * interval)
        assert _failed_reloads(client) == failed + 2
        serves_the_old_champion()


# --- 2. the hard rules set a floor under the model -------------------------------------------

AMOUNT_LIMIT = 500.0
TRAVEL_GAP = pd.Timedelta(minutes=10)


@dataclass(frozen=True)
class RuleCases:
    """Transactions the model alone approves, one per hard rule (distinct cards)."""

    blocked_card: dict[str, Any]
    blocked_device: dict[str, Any]
    at_the_limit: dict[str, Any]  # amount == AMOUNT_LIMIT; one cent more is over it
    travel_home: dict[str, Any]  # card present where the card last paid, 10 min later
    travel_far: dict[str, Any]  # the same in another country

    @property
    def over_the_limit(self) -> dict[str, Any]:
        return dict(self.at_the_limit, transaction_id="rule-over-limit", amount=AMOUNT_LIMIT + 0.01)


def _next_transactions(data_dir: Path) -> list[dict[str, Any]]:
    """For every card, its last purchase again ten minutes later. The online store holds the
    card's history up to that last purchase, so the model sees a known card, and the travel
    rule compares with that purchase's country."""
    frame = read_transactions(data_dir).drop(columns=["scenario"]).sort_values(["card_id", "event_time"])
    out = []
    for i, row in enumerate(frame.groupby("card_id", sort=True).tail(1).to_dict("records")):
        txn = as_body(row)
        txn["transaction_id"] = f"rule-case-{i:04d}"
        txn["event_time"] = (pd.Timestamp(row["event_time"]) + TRAVEL_GAP).isoformat()
        out.append(txn)
    return out


def _approved(client: httpx.Client, txn: dict[str, Any]) -> bool:
    out = client.post("/v1/score", json=txn).json()
    return bool(out["decision"] == "approve" and out["served_by"] == "champion")


def _far_from(country: str) -> str:
    return "JP" if country != "JP" else "BR"


@pytest.fixture(scope="module")
def control(base: Settings) -> Iterator[httpx.Client]:
    """The service with no hard rule that could fire on the cases: no block list, the default
    limit (10,000), the travel window 0 (the rule can never fire): what the model alone says."""
    settings = service_settings(base, prediction_log=False, impossible_travel_seconds=0)
    assert settings.amount_hard_limit > AMOUNT_LIMIT + 1
    with running_service(settings) as client:
        yield client


@pytest.fixture(scope="module")
def cases(training_side: TrainingSide, control: httpx.Client) -> RuleCases:
    """The first candidates (cards in order, fixed seeds) the model alone approves."""
    picked: dict[str, Any] = {}
    for txn in _next_transactions(training_side.data_dir):
        small = txn["amount"] <= AMOUNT_LIMIT
        if "blocked_card" not in picked:
            if small and _approved(control, txn):
                picked["blocked_card"] = txn
        elif "blocked_device" not in picked:
            if small and txn.get("device_id") and _approved(control, txn):
                picked["blocked_device"] = txn
        elif "at_the_limit" not in picked:
            at_limit = dict(txn, amount=AMOUNT_LIMIT)
            over = dict(txn, amount=AMOUNT_LIMIT + 0.01)
            if _approved(control, at_limit) and _approved(control, over):
                picked["at_the_limit"] = at_limit
        elif txn["channel"] == "card_present" and small:
            country = _far_from(txn["merchant_country"])
            far = dict(txn, merchant_country=country, transaction_id=txn["transaction_id"] + "-far")
            if _approved(control, txn) and _approved(control, far):
                picked["travel_home"], picked["travel_far"] = txn, far
                break
    assert len(picked) == 5, f"too few transactions the model approves: {sorted(picked)}"
    return RuleCases(**picked)


@pytest.fixture(scope="module")
def ruled(base: Settings, cases: RuleCases) -> Iterator[httpx.Client]:
    """The same service with the hard rules set as an operator sets them, in FRAUD_* variables:
    the first case's card and the second's device blocked, a 500 limit, a one-hour window."""
    card, device = cases.blocked_card["card_id"], cases.blocked_device["device_id"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FRAUD_BLOCKED_CARDS", json.dumps([card]))
        env.setenv("FRAUD_BLOCKED_DEVICES", json.dumps([device]))
        env.setenv("FRAUD_AMOUNT_HARD_LIMIT", "500")
        env.setenv("FRAUD_IMPOSSIBLE_TRAVEL_SECONDS", "3600")
        configured = Settings(profile="embedded", var_dir=base.var_dir, prediction_log=False)
    assert (configured.blocked_cards, configured.blocked_devices) == ([card], [device])
    assert configured.amount_hard_limit == AMOUNT_LIMIT
    settings = service_settings(configured)
    others = (cases.blocked_card, cases.at_the_limit, cases.travel_home, cases.travel_far)
    assert all(txn.get("device_id") != device for txn in others), "the blocked device is on another case"
    with running_service(settings) as client:
        yield client


def _floor_changes_the_decision(
    control: httpx.Client, ruled: httpx.Client, txn: dict[str, Any], decision: str, rule: str
) -> dict[str, Any]:
    """`txn` is approved by the model alone and gets `decision` with the rules, `rule` named first."""
    alone = control.post("/v1/score", json=txn).json()
    assert alone["served_by"] == "champion" and alone["decision"] == "approve", alone
    assert rule not in alone["reasons"], alone
    out = ruled.post("/v1/score", json=txn).json()
    assert out["decision"] == decision, out
    assert out["reasons"][0] == rule, out["reasons"]  # hard rules come first
    # The same model scored the same vector: only the floor differs.
    assert out["served_by"] == "champion" and out["model_version"] == alone["model_version"], out
    assert out["score"] == alone["score"], (out["score"], alone["score"])
    return out


def _hard_hits(out: dict[str, Any]) -> list[str]:
    hard = ("card is on the block list", "device is on the block list", "amount over", "impossible travel")
    return [r for r in out["reasons"] if r.startswith(hard)]


@pytest.mark.slow
def test_a_block_listed_card_is_declined_whatever_the_model_says(
    control: httpx.Client, ruled: httpx.Client, cases: RuleCases
) -> None:
    """Claim: a card on the block list (FRAUD_BLOCKED_CARDS) is declined, whatever the score."""
    out = _floor_changes_the_decision(
        control, ruled, cases.blocked_card, "decline", "card is on the block list"
    )
    assert _hard_hits(out) == ["card is on the block list"]


@pytest.mark.slow
def test_a_block_listed_device_is_declined_whatever_the_model_says(
    control: httpx.Client, ruled: httpx.Client, cases: RuleCases
) -> None:
    """Claim: a device on the block list (FRAUD_BLOCKED_DEVICES) is declined, whatever the score."""
    out = _floor_changes_the_decision(
        control, ruled, cases.blocked_device, "decline", "device is on the block list"
    )
    assert _hard_hits(out) == ["device is on the block list"]


@pytest.mark.slow
def test_an_amount_over_the_hard_limit_is_declined_one_cent_over(
    control: httpx.Client, ruled: httpx.Client, cases: RuleCases
) -> None:
    """Claim: an amount over the hard limit (FRAUD_AMOUNT_HARD_LIMIT) is declined; at the limit
    itself the model decides (the rule is "over", not "at least")."""
    at_limit = ruled.post("/v1/score", json=cases.at_the_limit).json()
    assert at_limit["decision"] == "approve" and _hard_hits(at_limit) == [], at_limit
    out = _floor_changes_the_decision(
        control, ruled, cases.over_the_limit, "decline", "amount over the hard limit of 500"
    )
    assert _hard_hits(out) == ["amount over the hard limit of 500"]


@pytest.mark.slow
def test_impossible_travel_goes_to_review_whatever_the_model_says(
    control: httpx.Client, ruled: httpx.Client, cases: RuleCases
) -> None:
    """Claim: a card present in another country within the travel window (an hour) of its
    previous purchase goes at least to review. The previous purchase is the one the online
    store holds (backfilled by training); the same purchase where the card last paid is
    approved by the same service, so the country change, through the rule, is what decides."""
    home = ruled.post("/v1/score", json=cases.travel_home).json()
    assert home["decision"] == "approve" and _hard_hits(home) == [], home
    assert "card" in home["stored_features"], home  # the card's history was read and used
    previous = cases.travel_home["merchant_country"]
    far = cases.travel_far["merchant_country"]
    rule = f"impossible travel: card present in {far}, 10 min after a purchase in {previous}"
    # The model approves, so "at least review" is review exactly: the floor, not a decline.
    out = _floor_changes_the_decision(control, ruled, cases.travel_far, "review", rule)
    assert _hard_hits(out) == [rule]
