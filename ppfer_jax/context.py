"""What the stages of one run share: config, workdir, mesh, networks, the stages it can load, loaded states."""

from __future__ import annotations

from pathlib import Path

from data_pipelines.sources import ArraySource, load_split
from ppfer_jax.anonymised import AnonymisedSplits
from ppfer_jax.nets import Nets
from ppfer_jax.parallel import process_batch_size
from ppfer_jax.stage import Stage, producer, shape_state, state_sharding
from ppfer_jax.timing import charged
from ppfer_jax.training import TrainState, abstract_state, load_best


class Context:
    """``stages`` (name -> Stage) are the stages whose checkpoints it can load; ``splits`` makes and keeps the
    anonymised splits that stages with a ``method`` read (``anonymised.py``)."""

    def __init__(self, config, workdir, mesh, *, stages: dict[str, Stage], splits: AnonymisedSplits):
        self.config, self.workdir, self.mesh = config, Path(workdir), mesh
        self.nets = Nets(config)
        self.stages = dict(stages)
        self.splits = splits
        self._states: dict[str, TrainState] = {}

    @property
    def eval_batch_size(self) -> int:
        """This process's share of ``train.eval_batch_size`` (a global batch)."""
        return process_batch_size(self.config.train.eval_batch_size, self.mesh, "train.eval_batch_size")

    def source(self, split: str, method: str | None = None, *, with_originals: bool = False) -> ArraySource:
        """A data split's clips: as rendered, or anonymised by a method (made once per workdir and method)."""
        with charged("data"):
            if method is None:
                return load_split(self.config, split)
            return self.splits.get(self, split, method, with_originals=with_originals)

    def add_stages(self, stages) -> None:
        """Stages defined while running (``reproduce``'s rows, whose blur sigma is searched) become loadable."""
        self.stages.update({stage.name: stage for stage in stages})

    def load(self, stage_name: str) -> TrainState:
        """The stage's selected (best, else final) state, loaded once per run."""
        if stage_name not in self._states:
            if stage_name not in self.stages:
                raise ValueError(f"no stage {stage_name!r} to load networks from")
            stage = self.stages[stage_name]
            target = abstract_state(shape_state(self.nets, stage), state_sharding(self.nets, self.mesh, stage))
            with charged("load"):
                self._states[stage_name] = load_best(self.workdir, stage_name, target)
        return self._states[stage_name]

    def network(self, name: str, stage_name: str | None = None) -> dict:
        state = self.load(stage_name or producer(name))
        return {"params": state.params[name], "batch_stats": state.batch_stats[name]}

    def forget(self, stage_name: str) -> None:
        self._states.pop(stage_name, None)
