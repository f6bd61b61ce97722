"""Locust users that post simulated transactions to `POST /v1/score`, for Locust's UI and workers.

    pip install -e ".[locust]"
    locust -f services/locustfile.py --host http://127.0.0.1:8000 --users 50 --spawn-rate 50 --user-rps 10

The bodies come from the same pool as `fraudctl loadtest` (`services.loadtest.transaction_pool`):
real transactions in the event schema, each with a fresh id and `event_time` = now.

Why `fraudctl loadtest` stays the tool for the SLO numbers: a Locust user waits for its
reply before the next request (`constant_throughput` only caps each user's rate), so
when the service stalls the users stop sending and the stall hides in a few slow
requests (coordinated omission). Use enough users that each one's share of the rate
is well below 1 / latency, and read Locust's percentiles as a lower bound. Its
requests-based client also adds its own milliseconds: against the test stub, 20 users at
5 req/s each (locust 2.47) showed a median of 19 ms where `fraudctl loadtest` shows ~1 ms.
"""

from __future__ import annotations

import itertools
from typing import Any

from locust import HttpUser, constant_throughput, events, task

from services.loadtest import TransactionPool, transaction_pool

_ids = itertools.count()
_pools: dict[str, TransactionPool] = {}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--user-rps", type=float, default=10.0, help="Requests per second per user.")
    parser.add_argument("--pool-size", type=int, default=2_000, help="Distinct transactions to cycle.")
    parser.add_argument("--pool-seed", type=int, default=7, help="Seed of the simulated pool.")
    parser.add_argument("--pool-data", default=None, help="Sample transactions from this dataset instead.")


@events.init.add_listener
def _build_pool(environment: Any, **_: Any) -> None:
    """Build the pool once per process, before any user starts (a second or so)."""
    options = environment.parsed_options
    if options is not None:
        _pools["pool"] = transaction_pool(options.pool_size, options.pool_seed, options.pool_data)


class ScoringUser(HttpUser):
    """One client of the scoring service, at most `--user-rps` requests a second."""

    def wait_time(self) -> float:
        return float(constant_throughput(self.environment.parsed_options.user_rps)(self))

    @task
    def score(self) -> None:
        if "pool" not in _pools:  # run as a library without the init event
            _pools["pool"] = transaction_pool()
        body = _pools["pool"].body(next(_ids))
        self.client.post("/v1/score", data=body, headers={"Content-Type": "application/json"})
