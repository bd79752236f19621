"""``ppfer-jax export``: writes the inference bundle (``bundle.py``) of a finished run.

A bundle is written to a temp directory beside ``BUNDLE`` and renamed: a failed export leaves nothing.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import jax
import ml_collections

from data_pipelines.files import give_default_mode, write_json_atomically
from data_pipelines.labels import EXPRESSIONS
from ppfer_jax.bundle import (
    CONFIG,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    UTILITY,
    VARIABLES,
    file_sha256,
    read_json,
    with_tuples,
)
from ppfer_jax.convert import save_variables
from ppfer_jax.nets import NETWORKS
from ppfer_jax.parallel import mesh_from_config
from ppfer_jax.recipes import run

METHODS = tuple(run.ANONYMISER_STAGES)  # the method rows a bundle can hold
# The run's config keys the bundle's networks need (``Nets``: bands/merge, privatize, compensate, input_shape).
_KEPT = {"data": ("image_size", "num_frames", "num_expressions"), "wavelet": ("name", "mode", "spatiotemporal"),
         "compensation": ("residual",)}


# ----------------------------------------------------------------------------------------------------------------
# Export


def export(workdir: str | os.PathLike, out: str | os.PathLike, *, with_utility: bool = False,
           overwrite: bool = False, method: str | None = None) -> Path:
    """Writes the bundle of a finished run in ``workdir`` to the directory ``out``; returns ``out``.

    ``method``: which row's anonymiser, 'ppfer' (the paper's Algorithm 1) or 'ppfer_robust'; None: the one whose
    privacy holds best against the fresh attackers (``default_method``)."""
    workdir, out = Path(workdir).absolute(), Path(out)  # orbax restores from absolute paths only
    method = method or default_method(workdir)
    if method not in METHODS:
        raise ValueError(f"export: --method {method!r}: expected one of {', '.join(METHODS)}")
    names = tuple(run.ANONYMISER_STAGES[method]) + ((UTILITY,) if with_utility else ())
    sources = {**run.ANONYMISER_STAGES[method], UTILITY: run.METHOD_ROWS[method]["utility"]}
    config = load_run_config(workdir)
    _check_finished(workdir, [sources[name] for name in names])
    if out.exists() and not overwrite:
        raise ValueError(f"export: {out} already exists; pass --overwrite to replace it, or choose another --out")
    ctx = run.context(config, workdir, mesh_from_config(config))
    variables = {name: jax.device_get(ctx.network(name, sources[name])) for name in names}
    bundle_config = cut_config(config, names, _expression_names(workdir, config))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for name, value in variables.items():
            save_variables(value, staging / name, dict(bundle_config.model[NETWORKS[name].section]))
        write_json_atomically(staging / CONFIG, bundle_config.to_dict())
        write_json_atomically(staging / MANIFEST, _manifest(workdir, config, names, method, staging))
        give_default_mode(staging, directory=True)  # mkdtemp's 0700; the files have their default mode
        _replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def load_run_config(workdir: Path) -> ml_collections.ConfigDict:
    """The config a run stored in ``workdir/config.json`` (``pipeline.check_workdir_config``), as a ConfigDict.

    JSON turned the config's tuples into lists; they are tuples again, as in the config files."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"export: {path} not found: is {workdir} the --workdir of a `ppfer-jax run`?")
    return ml_collections.ConfigDict(with_tuples(read_json(path, ValueError, "export: ")))


def cut_config(config, names: tuple[str, ...], expressions: list[str] | None) -> ml_collections.ConfigDict:
    """The run's config reduced to what rebuilds ``names``: no controller spec, no data set, no training."""
    kept = {section: {key: config[section][key] for key in keys} for section, keys in _KEPT.items()}
    kept["data"]["expressions"] = list(expressions) if expressions else None
    models = {}
    for name in names:
        spec = dict(config.model[NETWORKS[name].section])
        spec.pop("init_from", None)  # a path on the training machine; the bundle holds the trained weights
        models[NETWORKS[name].section] = spec
    return ml_collections.ConfigDict({"dtype": config.dtype, **kept, "model": models})


def default_method(workdir: Path) -> str:
    """The method row whose worst adaptive attacker (frame or clip) reads the fewest identities in the run's
    evaluation; 'ppfer' when the run has none."""
    results = _evaluation(Path(workdir))
    if not results or "table1" not in results:
        return "ppfer"
    table = results["table1"]
    return min((m for m in METHODS if m in table),
               key=lambda m: max(table[m]["adaptive_plr"], table[m].get("adaptive_plr_clip") or 0.0))


def _check_finished(workdir: Path, stages) -> None:
    for stage in dict.fromkeys(stages):
        if not (workdir / stage / "DONE.json").exists():
            raise ValueError(f"export: stage {stage} is not finished in {workdir} (no {stage}/DONE.json); "
                             f"run `ppfer-jax run --workdir {workdir}` to the end first")


def _expression_names(workdir: Path, config) -> list[str] | None:
    """Class names of F_u's outputs: the evaluation's, else the synthetic set's, else unknown."""
    results = _evaluation(workdir)
    if results and results.get("expressions"):
        return list(results["expressions"])
    if config.data.name == "synthetic":
        return list(EXPRESSIONS[: config.data.num_expressions])
    return None


def _evaluation(workdir: Path) -> dict | None:
    """The run's evaluation numbers: ``evaluate/results.json``, else report.json's copy of them."""
    for path, key in ((workdir / "evaluate" / "results.json", None), (workdir / "report.json", "results")):
        if path.is_file():
            value = json.loads(path.read_text())
            return value.get(key) if key else value
    return None


def _manifest(workdir: Path, config, names: tuple[str, ...], method: str, staging: Path) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "source": {"workdir": str(workdir.absolute()), "data": config.data.name, "seed": config.seed},
        "networks": list(names),
        "method": method,
        "evaluation": _evaluation(workdir),
        "sha256": {f"{name}/{VARIABLES}": file_sha256(staging / name / VARIABLES) for name in names},
    }


def _versions() -> dict:
    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None
    return {"ppfer-jax": version("ppfer-jax"), "jax": jax.__version__, "jaxlib": version("jaxlib"),
            "flax": version("flax"), "python": platform.python_version()}


def _replace_dir(staging: Path, out: Path) -> None:
    """Renames ``staging`` to ``out``; an existing ``out`` is moved aside first and deleted only afterwards."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
        os.replace(out, old / out.name)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
