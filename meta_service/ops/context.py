"""What ops need besides the transaction: routing, defaults, a clock."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from py3fs.routing import RoutingView


@dataclass
class OpContext:
    # The latest routing view, or None before mgmtd answered; only creating a
    # file (its layout) and statfs read it.
    routing: Callable[[], RoutingView | None] = lambda: None
    chunk_size: int = 4 * 1024 * 1024
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)

    def now_ns(self) -> int:
        """The clock in integer nanoseconds, the unit of inode times."""
        return int(self.clock() * 1_000_000_000)
