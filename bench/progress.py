"""Progress of long loops: a tqdm bar on a terminal, a log line every few seconds elsewhere (a cluster log).

    for epoch in progress.track(range(epochs), desc="sgd, 30 heads", unit="epoch"):
        ...
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm

log = logging.getLogger(__name__)

EVERY = 10.0  # seconds between two log lines when stderr is not a terminal: a 20-minute fit writes ~120 lines


def track(items: Iterable, *, desc: str, unit: str = "it", total: int | None = None,
          every: float | None = None) -> Iterator:
    """Yield `items`; show how far the loop is: a bar on a terminal, else a log line at most every `every` s."""
    every = EVERY if every is None else every
    total = len(items) if total is None and hasattr(items, "__len__") else total
    if sys.stderr.isatty():
        yield from tqdm(items, desc=desc, unit=unit, total=total, leave=False)
        return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done, now = done + 1, time.monotonic()
        if now - last >= every:
            last = now
            left = f", about {(now - start) / done * (total - done):.0f} s left" if total else ""
            log.info("%s: %d/%s %s(s) done in %.0f s%s", desc, done, total or "?", unit, now - start, left)
