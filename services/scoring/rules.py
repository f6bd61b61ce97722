"""The rules layer: decisions no model may overrule, and the rules-only score to fall back on.

Hard rules set a floor under the decision: a blocked card or device and an amount over
the hard limit are declined, an impossible trip goes at least to review, whatever the
score. The soft rules are the fraud team's point list of `models.baselines` (the rules-
only baseline every model is measured against): they are reported as reasons, and when
no model can be used (kill switch, no model loaded, model failure) their points decide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.events import Transaction
from core.features import SECOND, Snapshot
from core.settings import Settings
from models.baselines import MAX_POINTS, RULES, rule_flags
from models.costs import APPROVE, DECLINE, REVIEW

SEVERITY = {APPROVE: 0, REVIEW: 1, DECLINE: 2}
# Rules-only decisions (fallback): points of the soft rules that fire.
RULES_ONLY_REVIEW_POINTS = 3
RULES_ONLY_DECLINE_POINTS = 5


def stricter(a: str, b: str) -> str:
    return a if SEVERITY[a] >= SEVERITY[b] else b


@dataclass(frozen=True)
class RuleOutcome:
    hits: list[str]  # every rule that fired, hard ones first, in words
    floor: str  # the least severe decision the hard rules allow
    points: int  # soft-rule points

    @property
    def score(self) -> float:
        """The rules-only score in [0, 1] (points over the maximum), as in the baseline."""
        return self.points / MAX_POINTS

    def rules_only_decision(self) -> str:
        if self.points >= RULES_ONLY_DECLINE_POINTS:
            by_points = DECLINE
        elif self.points >= RULES_ONLY_REVIEW_POINTS:
            by_points = REVIEW
        else:
            by_points = APPROVE
        return stricter(self.floor, by_points)


def _previous_country(card: Snapshot | None) -> str | None:
    """The merchant country of the card's previous transaction, from its snapshot."""
    if not card or not card.get("card_known_countries"):
        return None
    last = card["card_last_txn_at_us"]
    for country, seen in zip(
        card["card_known_countries"], card["card_known_countries_last_seen_us"], strict=False
    ):
        if int(seen) == last:
            return str(country)
    return None


class Rules:
    def __init__(self, settings: Settings) -> None:
        self.blocked_cards = frozenset(settings.blocked_cards)
        self.blocked_devices = frozenset(settings.blocked_devices)
        self.amount_hard_limit = settings.amount_hard_limit
        self.travel_window_us = settings.impossible_travel_seconds * SECOND

    def evaluate(
        self, txn: Transaction, time_us: int, card: Snapshot | None, features: Mapping[str, float]
    ) -> RuleOutcome:
        hits: list[str] = []
        floor = APPROVE
        if txn.card_id in self.blocked_cards:
            hits.append("card is on the block list")
            floor = DECLINE
        if txn.device_id and txn.device_id in self.blocked_devices:
            hits.append("device is on the block list")
            floor = DECLINE
        if txn.amount > self.amount_hard_limit:
            hits.append(f"amount over the hard limit of {self.amount_hard_limit:,.0f}")
            floor = DECLINE
        previous = _previous_country(card)
        if previous is not None and card is not None and txn.channel == "card_present":
            since = time_us - int(card["card_last_txn_at_us"])
            if previous != txn.merchant_country and 0 <= since < self.travel_window_us:
                hits.append(
                    f"impossible travel: card present in {txn.merchant_country}, "
                    f"{since / (60 * SECOND):.0f} min after a purchase in {previous}"
                )
                floor = stricter(floor, REVIEW)
        points = 0
        for (text, weight), fired in zip(RULES, rule_flags(features), strict=True):
            if fired:
                hits.append(text)
                points += weight
        return RuleOutcome(hits, floor, points)
