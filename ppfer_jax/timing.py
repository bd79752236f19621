"""Where a stage's time goes: XLA compiles, training steps, evaluation passes, data, checkpoints.

A process keeps one clock of exclusive times by kind: ``charged(kind)`` books the time spent inside it to ``kind``
and takes it off the enclosing block's kind, and every XLA compile (a ``jax.monitoring`` event, with the
persistent cache's hits told apart) is booked to ``compile`` and taken off the block it happened in. So the kinds of
one stage add up to its wall time, and ``StageRunner`` writes them to ``<stage>/timing.json``
(``benchmarks/run_time.py`` tabulates a run's).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict

from jax import monitoring

COMPILE = "compile"
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch.BACKEND_COMPILE_EVENT
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


class _Clock:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.compiles: list[dict] = []  # {"name", "seconds", "cached"} in order
        self.stack: list[str] = []
        self.cache_hit = False
        self.lock = threading.Lock()

    def book(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.seconds[kind] += seconds
            if self.stack and self.stack[-1] != kind:
                self.seconds[self.stack[-1]] -= seconds


_CLOCK = _Clock()
_installed = False


def install() -> None:
    """Listens to jax's compile events (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True

    def on_event(event: str, **_) -> None:
        if event == _CACHE_HIT_EVENT:
            _CLOCK.cache_hit = True

    def on_duration(event: str, seconds: float, **kwargs) -> None:
        if event == _COMPILE_EVENT:
            _CLOCK.book(COMPILE, seconds)
            _CLOCK.compiles.append({"name": str(kwargs.get("fun_name", "?")), "seconds": round(seconds, 3),
                                    "cached": _CLOCK.cache_hit})
            _CLOCK.cache_hit = False

    monitoring.register_event_listener(on_event)
    monitoring.register_event_duration_secs_listener(on_duration)


@contextlib.contextmanager
def charged(kind: str):
    """Books the wall time inside the block to ``kind`` (less what nested blocks and compiles book)."""
    _CLOCK.stack.append(kind)
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        _CLOCK.stack.pop()
        _CLOCK.book(kind, elapsed)


def snapshot() -> tuple[dict[str, float], int]:
    """The clock's totals and how many compiles it has seen: pass to ``since``."""
    return dict(_CLOCK.seconds), len(_CLOCK.compiles)


def since(mark: tuple[dict[str, float], int]) -> dict:
    """Seconds by kind and the compiles (name, seconds, whether the persistent cache had it) since ``mark``."""
    before, count = mark
    seconds = {kind: round(total - before.get(kind, 0.0), 3) for kind, total in _CLOCK.seconds.items()
               if abs(total - before.get(kind, 0.0)) > 5e-4}
    return {"seconds": seconds, "compiles": list(_CLOCK.compiles[count:])}
