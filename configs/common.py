"""Pieces shared by the config files."""

import ml_collections


def stage(steps: int, batch_size: int, learning_rate: float, eval_every: int | None = None,
          schedule: str = "constant") -> ml_collections.ConfigDict:
    """One training stage's schedule. ``schedule``: "constant", or "cosine" (linear warm-up over a tenth of
    the steps, then cosine decay to 0). ``eval_every``: evaluate and select the best checkpoint this often
    (stages that select one)."""
    return ml_collections.ConfigDict(dict(steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                                          eval_every=eval_every, schedule=schedule))
