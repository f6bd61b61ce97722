"""Run a benchmark body in a fresh interpreter, so its peak memory is its own."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def run_in_fresh_process(target: Callable[[Any], None], timeout_s: float) -> dict[str, Any]:
    """Run ``target(queue)`` in a spawned child and return the dict it puts on the queue.

    "spawn", not "fork": a forked child would inherit (and report) the parent's peak memory.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=target, args=(queue,))
    child.start()
    result = queue.get(timeout=timeout_s)
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"benchmark child exited with {child.exitcode}")
    return dict(result)
