"""Bisection for a monotone, possibly noisy, scalar function: the blur baselines' sigma search.

``bisect`` finds x in [lo, hi] with f(x) near a target, for f increasing or decreasing (inferred from
f(lo), f(hi)). Invariant: the kept bracket's two values always enclose the target, so the answer lies
between the last two points it names even when a step-like f (a PLR over 72 clips only takes multiples
of 1/72) never comes within tolerance. The points it asks for depend only on the values returned, so a
search whose evaluations are cached (trained stages on disk) replays identically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Search:
    """The outcome: the chosen point and its value, the final bracket, and every evaluation in order."""

    x: float
    value: float
    target: float
    bracket: tuple[tuple[float, float], tuple[float, float]]
    history: tuple[tuple[float, float], ...]
    bracketed: bool  # f(lo) and f(hi) enclose the target
    converged: bool  # |value - target| <= tolerance

    def to_dict(self) -> dict:
        return {"x": float(self.x), "value": float(self.value), "target": float(self.target),
                "bracket": [[float(x), float(v)] for x, v in self.bracket],
                "history": [[float(x), float(v)] for x, v in self.history],
                "bracketed": bool(self.bracketed), "converged": bool(self.converged)}


def encloses(a: float, b: float, target: float) -> bool:
    return min(a, b) <= target <= max(a, b)


def bisect(f: Callable[[float], float], lo: float, hi: float, target: float, *, max_evaluations: int,
           tolerance: float) -> Search:
    """Bisection on [lo, hi] for f(x) = target, within ``tolerance``, in at most ``max_evaluations`` calls of f
    (the two ends included). Returns the evaluated point whose value is nearest the target (the later on ties)."""
    if not lo < hi:
        raise ValueError(f"bisect: expected lo < hi, got lo={lo!r}, hi={hi!r}")
    if max_evaluations < 2:
        raise ValueError(f"bisect: max_evaluations must be at least 2 (both ends), got {max_evaluations!r}")
    if tolerance < 0:
        raise ValueError(f"bisect: tolerance must be >= 0, got {tolerance!r}")
    history: list[tuple[float, float]] = []

    def evaluate(x: float) -> float:
        value = float(f(x))
        history.append((float(x), value))
        return value

    low, high = (float(lo), evaluate(lo)), (float(hi), evaluate(hi))
    bracketed = encloses(low[1], high[1], target)
    if bracketed:
        while len(history) < max_evaluations and min(abs(v - target) for _, v in history) > tolerance:
            mid_x = 0.5 * (low[0] + high[0])
            mid = (mid_x, evaluate(mid_x))
            if encloses(low[1], mid[1], target):
                high = mid
            else:
                low = mid
    best = min(reversed(history), key=lambda point: abs(point[1] - target))
    return Search(x=best[0], value=best[1], target=float(target), bracket=(low, high), history=tuple(history),
                  bracketed=bracketed, converged=abs(best[1] - target) <= tolerance)
