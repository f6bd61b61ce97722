"""The population the simulator draws from (merchants, cards) and the fraud it injects.

Kept apart from ``simulate.py`` so that each fraud scenario reads as one short function:
who is the victim, where, when, how much. Every function works on whole numpy arrays
(one row per incident, then ``np.repeat`` to one row per transaction), never on one
transaction at a time: that is what keeps a million transactions within seconds.

Transactions travel between the functions as a ``Block``: a dict of equally long arrays
of integer codes (card, merchant, device and country indices), turned into strings only
once, at the end, in ``simulate.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
MINUTE_US = 60_000_000

# name: (median ticket in USD, share of purchases made online, share of merchants)
CATEGORY_TABLE = {
    "grocery": (45, 0.10, 0.16),
    "restaurant": (28, 0.05, 0.20),
    "gas": (40, 0.0, 0.10),
    "fashion": (65, 0.45, 0.10),
    "electronics": (140, 0.60, 0.06),
    "travel": (260, 0.75, 0.05),
    "digital_goods": (12, 1.0, 0.08),
    "pharmacy": (22, 0.15, 0.07),
    "entertainment": (35, 0.40, 0.08),
    "home": (85, 0.35, 0.10),
    "crypto": (120, 1.0, 0.0),  # last, no share: only the new-merchant-mix drift creates these
}
CATEGORIES = tuple(CATEGORY_TABLE)
CATEGORY_MEDIAN_USD, CATEGORY_ECOMMERCE, CATEGORY_WEIGHT = np.array(list(CATEGORY_TABLE.values())).T
CRYPTO = CATEGORIES.index("crypto")

# code: (share of merchants and of card holders, share of fraudsters' IP addresses)
COUNTRY_TABLE = {
    "US": (0.85, 0.10),
    "GB": (0.03, 0.08),
    "CA": (0.03, 0.04),
    "MX": (0.025, 0.06),
    "DE": (0.02, 0.06),
    "FR": (0.015, 0.05),
    "BR": (0.01, 0.14),
    "IN": (0.008, 0.10),
    "CN": (0.006, 0.12),
    "NG": (0.003, 0.13),
    "RU": (0.003, 0.12),
}
COUNTRIES = tuple(COUNTRY_TABLE)
COUNTRY_WEIGHT, ATTACKER_COUNTRY_WEIGHT = np.array(list(COUNTRY_TABLE.values())).T

DEFAULT_SCENARIO_MIX = {
    "card_testing": 0.35,
    "account_takeover": 0.2,
    "compromised_merchant": 0.25,
    "compromised_card": 0.2,
}
SCENARIOS = ("legit", *DEFAULT_SCENARIO_MIX, "new_pattern")  # "new_pattern" only with that drift
# The drifted "new_pattern" runs at the volume of a quarter of the configured fraud (the
# default of SimulationParams.new_pattern_share).
NEW_PATTERN_SHARE = 0.25

BLOCK_DTYPES = {
    "card": np.int32,
    "merchant": np.int32,
    "time": np.int64,
    "amount": np.float64,
    "ecommerce": np.bool_,
    "device": np.int32,
    "ip": np.int16,
    "scenario": np.int8,
}
Block = dict[str, np.ndarray]


def make_block(scenario: str, **columns: np.ndarray) -> Block:
    """One ``Block`` of transactions, with the column dtypes every block shares."""
    block: Block = {
        name: np.asarray(columns[name], dtype=dtype)
        for name, dtype in BLOCK_DTYPES.items()
        if name != "scenario"
    }
    block["scenario"] = np.full(len(block["card"]), SCENARIOS.index(scenario), dtype=np.int8)
    return block


class Picker:
    """Draws merchants by weight within a group (a country, a category) for many rows at once.

    The per-group cumulative weights are laid end to end, row ``g`` shifted by ``g``, so one
    ``searchsorted`` of ``group + uniform`` serves any mix of groups. Groups with no
    merchant of their own fall back to ``fallback`` (the overall popularity).
    """

    def __init__(self, weights: np.ndarray, fallback: np.ndarray) -> None:
        weights = np.atleast_2d(weights).astype(float)
        weights = np.where(weights.sum(axis=1, keepdims=True) > 0, weights, fallback)
        cdf = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
        cdf[:, -1] = 1.0
        self._width = weights.shape[1]
        self._flat = (cdf + np.arange(len(cdf))[:, None]).ravel()

    def pick(self, groups: np.ndarray | int, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
        groups = np.asarray(groups, dtype=np.int64)
        if size is not None:
            groups = np.broadcast_to(groups, (size,))
        position = np.searchsorted(self._flat, groups + rng.random(len(groups)), side="right")
        return np.clip(position - groups * self._width, 0, self._width - 1).astype(np.int32)


@dataclass
class World:
    """Merchants and cards, as arrays indexed by merchant or card number."""

    merchant_ids: np.ndarray  # object array of "m_00042" / "m_new_00003"
    merchant_category: np.ndarray
    merchant_country: np.ndarray
    merchant_ecommerce: np.ndarray
    customer: np.ndarray  # card -> customer number (some customers hold two cards)
    home: np.ndarray  # card -> country index
    level: np.ndarray  # card's spending level, multiplies the category's median ticket
    sigma: np.ndarray  # spread of the card's lognormal amounts
    daily_rate: np.ndarray
    peak_hour: np.ndarray
    hour_spread: np.ndarray
    ecommerce_affinity: np.ndarray  # > 1 shops online more than the merchant's usual
    preferred: np.ndarray  # cards x 5 merchant numbers, mostly in the home country
    device_base: np.ndarray  # first device number of the card
    device_count: np.ndarray  # 1 or 2
    pickers: dict[str, Picker]

    @property
    def cards(self) -> int:
        return len(self.home)

    @property
    def devices(self) -> int:
        return int(self.device_base[-1] + self.device_count[-1])

    def typical_amount(self, card: np.ndarray, merchant: np.ndarray) -> np.ndarray:
        """The card's median ticket at this kind of merchant."""
        return self.level[card] * CATEGORY_MEDIAN_USD[self.merchant_category[merchant]]


def build_world(cards: int, merchants: int, rng: np.random.Generator) -> World:
    """Draw the merchants (at least 10) and the cards with their habits."""
    # Every category but crypto exists at least once, so every scenario finds its kind of merchant.
    base_weight = CATEGORY_WEIGHT / CATEGORY_WEIGHT.sum()
    category = np.concatenate(
        [np.arange(CRYPTO), rng.choice(len(CATEGORIES), merchants - CRYPTO, p=base_weight)]
    )
    country = rng.choice(len(COUNTRIES), merchants, p=COUNTRY_WEIGHT)
    ecommerce = np.clip(CATEGORY_ECOMMERCE[category] * rng.uniform(0.7, 1.3, merchants), 0.0, 1.0)
    ecommerce[CATEGORY_ECOMMERCE[category] >= 1.0] = 1.0
    popularity = 1.0 / rng.permutation(np.arange(1, merchants + 1)) ** 0.9  # Zipf-like

    in_country = country[None, :] == np.arange(len(COUNTRIES))[:, None]
    in_tail = np.zeros_like(in_country)  # the least visited 30% of a country's merchants
    for g in range(len(COUNTRIES)):
        if in_country[g].any():
            in_tail[g] = in_country[g] & (popularity <= np.quantile(popularity[in_country[g]], 0.3))

    def of_categories(*names: str) -> np.ndarray:
        return popularity * np.isin(category, [CATEGORIES.index(n) for n in names])

    pickers = {
        "home": Picker(popularity * in_country, popularity),
        "foreign": Picker(popularity * ~in_country, popularity),
        "anywhere": Picker(popularity, popularity),
        "tail": Picker(in_tail.astype(float), popularity),
        "digital": Picker(of_categories("digital_goods"), popularity),
        "takeover": Picker(of_categories("electronics", "travel"), popularity),
        "online_fraud": Picker(
            of_categories("electronics", "fashion", "digital_goods", "travel"), popularity
        ),
    }

    second_card = rng.random(cards) < 0.15
    second_card[0] = False
    second_card[1:] &= ~second_card[:-1]  # at most two cards per customer
    customer = np.cumsum(~second_card) - 1
    home = rng.choice(len(COUNTRIES), customer[-1] + 1, p=COUNTRY_WEIGHT)[customer]
    device_count = 1 + (rng.random(cards) < 0.4)
    preferred = pickers["home"].pick(np.repeat(home, 5), rng).reshape(cards, 5)
    elsewhere = rng.random(preferred.shape) < 0.1  # a favourite shop abroad or online
    preferred[elsewhere] = pickers["anywhere"].pick(0, rng, int(elsewhere.sum()))
    return World(
        merchant_ids=np.array([f"m_{i:05d}" for i in range(merchants)], dtype=object),
        merchant_category=category,
        merchant_country=country,
        merchant_ecommerce=ecommerce,
        customer=customer,
        home=home,
        level=rng.lognormal(0.0, 0.45, cards),
        sigma=rng.uniform(0.35, 0.8, cards),
        daily_rate=rng.gamma(2.0, 0.75, cards),  # mean 1.5 a day
        peak_hour=np.clip(rng.normal(14.5, 3.0, cards), 7.0, 22.0),
        hour_spread=rng.uniform(1.5, 4.0, cards),
        ecommerce_affinity=rng.lognormal(0.0, 0.5, cards),
        preferred=preferred,
        device_base=np.cumsum(device_count) - device_count,
        device_count=device_count,
        pickers=pickers,
    )


def add_new_merchants(world: World, count: int, rng: np.random.Generator) -> None:
    """Append ``count`` crypto merchants ("m_new_...") that only the new-merchant-mix drift visits."""
    old = len(world.merchant_ids)
    world.merchant_ids = np.concatenate([world.merchant_ids, [f"m_new_{i:05d}" for i in range(count)]])
    world.merchant_category = np.concatenate([world.merchant_category, np.full(count, CRYPTO)])
    country = rng.choice(len(COUNTRIES), count, p=COUNTRY_WEIGHT)
    world.merchant_country = np.concatenate([world.merchant_country, country])
    world.merchant_ecommerce = np.concatenate(
        [world.merchant_ecommerce, np.full(count, CATEGORY_ECOMMERCE[CRYPTO])]
    )
    popularity = np.zeros(old + count)
    popularity[old:] = 1.0 / rng.permutation(np.arange(1, count + 1)) ** 0.9
    world.pickers["new"] = Picker(popularity, popularity)


def foreign_country(home: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An attacker's (or traveller's) country, never equal to ``home``."""
    country = rng.choice(len(COUNTRIES), len(home), p=ATTACKER_COUNTRY_WEIGHT)
    clash = country == home
    country[clash] = (home[clash] + rng.integers(1, len(COUNTRIES), clash.sum())) % len(COUNTRIES)
    return country


class DeviceIssuer:
    """Hands out device numbers no card has used before (a fraudster's own device)."""

    def __init__(self, first: int) -> None:
        self.next = first

    def issue(self, count: int) -> np.ndarray:
        devices = np.arange(self.next, self.next + count)
        self.next += count
        return devices


def incident_sizes(rng: np.random.Generator, low: int, high: int, target: float) -> np.ndarray:
    """Transactions per incident (each in [low, high]) adding up as close as possible to ``target``."""
    if target <= 0:
        return np.zeros(0, dtype=np.int64)
    sizes = rng.integers(low, high + 1, int(target // low) + 2)
    totals = np.concatenate([[0], np.cumsum(sizes)])
    return sizes[: int(np.argmin(np.abs(totals - target)))]


def victim_incidents(
    world: World, rng: np.random.Generator, low: int, high: int, target: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Incidents of ``low``-``high`` fraud transactions adding up to ``target``, each on a random card.

    Returns:
        ``(sizes, victim, card)``: transactions per incident, the card of each incident,
        and the card of each transaction (``victim`` repeated by ``sizes``).
    """
    sizes = incident_sizes(rng, low, high, target)
    victim = rng.integers(0, world.cards, len(sizes))
    return sizes, victim, np.repeat(victim, sizes)


def _spread(start: np.ndarray, span: np.ndarray, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Times of each incident's transactions, uniform within [start, start + span)."""
    return np.repeat(start, sizes) + (rng.random(sizes.sum()) * np.repeat(span, sizes)).astype(np.int64)


def card_testing(
    world: World, rng: np.random.Generator, target: float, period_us: int, devices: DeviceIssuer
) -> Block:
    """Bursts of 8-40 tiny online attempts at one digital-goods merchant within 2-15 minutes."""
    sizes, victim, card = victim_incidents(world, rng, 8, 40, target)
    k, n = len(sizes), len(card)
    device = world.device_base[victim].copy()
    new_device = rng.random(k) < 0.7
    device[new_device] = devices.issue(int(new_device.sum()))
    ip = np.where(rng.random(k) < 0.6, foreign_country(world.home[victim], rng), world.home[victim])
    start = rng.integers(0, period_us - 15 * MINUTE_US, k)
    time = _spread(start, rng.uniform(2, 15, k) * MINUTE_US, sizes, rng)
    return make_block(
        "card_testing",
        card=card,
        time=time,
        merchant=np.repeat(world.pickers["digital"].pick(0, rng, k), sizes),
        amount=np.round(rng.uniform(0.5, 5.0, n), 2),
        ecommerce=np.ones(n, bool),
        device=np.repeat(device, sizes),
        ip=np.repeat(ip, sizes),
    )


def account_takeover(
    world: World, rng: np.random.Generator, target: float, period_us: int, devices: DeviceIssuer
) -> Block:
    """A new device abroad buys 2-6 electronics or travel items at 3-10x the card's usual, within hours."""
    sizes, victim, card = victim_incidents(world, rng, 2, 6, target)
    k, n = len(sizes), len(card)
    merchant = world.pickers["takeover"].pick(0, rng, n)
    start = rng.integers(0, period_us - 6 * HOUR_US, k)
    return make_block(
        "account_takeover",
        card=card,
        merchant=merchant,
        time=_spread(start, rng.uniform(1, 6, k) * HOUR_US, sizes, rng),
        amount=np.round(world.typical_amount(card, merchant) * rng.uniform(3, 10, n), 2),
        ecommerce=np.ones(n, bool),
        device=np.repeat(devices.issue(k), sizes),
        ip=np.repeat(foreign_country(world.home[victim], rng), sizes),
    )


def compromised_card(
    world: World, rng: np.random.Generator, target: float, period_us: int, devices: DeviceIssuer
) -> Block:
    """3-8 purchases at ordinary home merchants over 2-5 days, amounts inflated 3-8x."""
    sizes, victim, card = victim_incidents(world, rng, 3, 8, target)
    k, n = len(sizes), len(card)
    merchant = world.pickers["home"].pick(world.home[card], rng)
    ecommerce = rng.random(n) < world.merchant_ecommerce[merchant]
    span = np.minimum(rng.uniform(2, 5, k) * DAY_US, period_us - 1)
    start = (rng.random(k) * (period_us - span)).astype(np.int64)
    inflation = rng.uniform(3, 8, n) * np.exp(world.sigma[card] * rng.standard_normal(n))
    return make_block(
        "compromised_card",
        card=card,
        merchant=merchant,
        ecommerce=ecommerce,
        time=_spread(start, span, sizes, rng),
        amount=np.round(world.typical_amount(card, merchant) * inflation, 2),
        device=np.where(ecommerce, np.repeat(devices.issue(k), sizes), -1),
        ip=np.where(ecommerce, world.home[card], -1),
    )


def compromised_merchant(
    world: World, rng: np.random.Generator, target: float, legit: Block, days: int, devices: DeviceIssuer
) -> tuple[Block, list[tuple[int, int, int]]]:
    """Breach merchants one after another until ``target`` fraud transactions are reached.

    Every card seen at the merchant during a 1-3 day window is stolen; 1-10 days after the
    window, ~60% of them show 1-4 transactions elsewhere, mostly counterfeit cards used in
    shops abroad, otherwise online from a new device. Returns the fraud and the breaches
    as (merchant, first day, last day).
    """
    by_merchant = np.argsort(legit["merchant"], kind="stable")
    sorted_merchant = legit["merchant"][by_merchant]
    legit_day = legit["time"] // DAY_US
    empty = np.zeros(0, dtype=np.int64)
    victims, fraud_days, sizes, breached = [empty], [empty], [empty], [empty]
    breaches: list[tuple[int, int, int]] = []
    produced = 0
    for merchant in rng.permutation(np.unique(sorted_merchant)) if days >= 2 and target > 0 else []:
        width = min(int(rng.integers(1, 4)), days - 1)
        first = int(rng.integers(0, days - width))
        lo, hi = np.searchsorted(sorted_merchant, [merchant, merchant + 1])
        rows = by_merchant[lo:hi]
        rows = rows[(legit_day[rows] >= first) & (legit_day[rows] < first + width)]
        stolen = np.unique(legit["card"][rows])
        used = rng.permutation(stolen[rng.random(len(stolen)) < 0.6])
        if len(used) == 0:
            continue
        room = min(10, days - first - width)  # fraud stays within the simulated period
        count = rng.integers(1, 5, len(used))
        keep = max(1, int(np.searchsorted(np.cumsum(count), target - produced, side="right")))
        victims.append(used[:keep])
        fraud_days.append(first + width - 1 + rng.integers(1, room + 1, keep))
        sizes.append(count[:keep])
        breached.append(np.full(keep, merchant))
        breaches.append((int(merchant), first, first + width - 1))
        produced += int(count[:keep].sum())
        if produced >= target:
            break
    victim, size = np.concatenate(victims), np.concatenate(sizes)
    card, n = np.repeat(victim, size), int(size.sum())
    start = np.concatenate(fraud_days) * DAY_US + (rng.random(len(victim)) * 20 * HOUR_US).astype(np.int64)
    abroad = np.repeat(rng.random(len(victim)) < 0.65, size)
    # Draw where the stolen cards are used, again wherever a draw hit the breached merchant itself.
    breached_merchant = np.repeat(np.concatenate(breached), size)
    merchant = breached_merchant.copy()
    for _ in range(100):
        again = np.flatnonzero(merchant == breached_merchant)
        if len(again) == 0:
            break
        abroad_pick = world.pickers["foreign"].pick(world.home[card[again]], rng)
        online_pick = world.pickers["online_fraud"].pick(0, rng, len(again))
        merchant[again] = np.where(abroad[again], abroad_pick, online_pick)
    return make_block(
        "compromised_merchant",
        card=card,
        merchant=merchant,
        ecommerce=~abroad,
        time=_spread(start, np.full(len(victim), 4 * HOUR_US), size, rng),
        amount=np.round(world.typical_amount(card, merchant) * rng.uniform(1.5, 4, n), 2),
        device=np.where(abroad, -1, np.repeat(devices.issue(len(victim)), size)),
        ip=np.where(abroad, -1, foreign_country(world.home[card], rng)),
    ), breaches


def new_pattern(world: World, rng: np.random.Generator, target: float, first_day: int, days: int) -> Block:
    """The drift's unseen fraud: 1-3 ordinary night purchases in home shops at rarely visited merchants."""
    sizes, victim, card = victim_incidents(world, rng, 1, 3, target)
    k, n = len(sizes), len(card)
    merchant = world.pickers["tail"].pick(world.home[card], rng)
    start = rng.integers(first_day, days, k) * DAY_US + (rng.random(k) * 4 * HOUR_US).astype(np.int64)
    amount = world.typical_amount(card, merchant) * np.exp(world.sigma[card] * rng.standard_normal(n))
    return make_block(
        "new_pattern",
        card=card,
        merchant=merchant,
        time=_spread(start, np.full(k, HOUR_US), sizes, rng),
        amount=np.round(np.clip(amount, 0.5, 50_000), 2),
        ecommerce=np.zeros(n, bool),
        device=np.full(n, -1),
        ip=np.full(n, -1),
    )
