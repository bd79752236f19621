"""Inference bundles: the trained anonymiser of a run, alone, in one directory (``ppfer-jax export``).

A deployment needs F_lpr, F_hpr and F_fc (and F_u to read expressions), never the
controllers, the validator, the attacker or the training data: a bundle holds only
those networks and the part of the run's config that rebuilds them::

    BUNDLE/
      manifest.json              format version, versions, date, the run's evaluation numbers, checksums
      config.json                image size, frames per clip, wavelet, compensation, dtype, the networks' specs
      f_low/variables.msgpack    F_lpr (+ spec.json; ``convert.save_variables``' layout)
      f_high/ f_fc/ [f_u/]

``config.json`` is the run's config cut down to the keys ``ppfer.Nets`` reads for these
networks, so ``anonymise`` runs exactly the chain the evaluation scored. A bundle is
written to a temp directory beside ``BUNDLE`` and renamed: a failed export leaves nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import jax
import ml_collections
import numpy as np

from ppfer_jax.convert import load_variables, save_variables
from ppfer_jax.files import give_default_mode, write_json_atomically
from ppfer_jax.methods import ppfer, registry
from ppfer_jax.parallel import mesh_from_config

FORMAT = "ppfer-jax-bundle"
FORMAT_VERSION = 1  # bump when a bundle written by this version cannot be read by an older one, or vice versa
MANIFEST = "manifest.json"
CONFIG = "config.json"
VARIABLES = "variables.msgpack"
ANONYMISER = ppfer.ANONYMISER  # f_low, f_high, f_fc
METHODS = tuple(registry.ANONYMISER_STAGES)  # the method rows a bundle can hold
UTILITY = "f_u"
# The run's config keys the bundle's networks need (``Nets``: split/merge, privatize, compensate, dummy_input).
_KEPT = {"data": ("image_size", "num_frames", "num_expressions"), "wavelet": ("name", "mode", "spatiotemporal"),
         "compensation": ("residual",)}


class BundleError(ValueError):
    """A directory that is not a usable bundle; the message names the file and what was expected."""


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
    names = ANONYMISER + ((UTILITY,) if with_utility else ())
    sources = {**registry.ANONYMISER_STAGES[method], UTILITY: registry.METHOD_ROWS[method]["utility"]}
    config = load_run_config(workdir)
    _check_finished(workdir, [sources[name] for name in names])
    if out.exists() and not overwrite:
        raise ValueError(f"export: {out} already exists; pass --overwrite to replace it, or choose another --out")
    ctx = ppfer.Context(config, workdir, mesh_from_config(config))
    variables = {name: jax.device_get(ctx.network(name, sources[name])) for name in names}
    bundle_config = cut_config(config, names, _expression_names(workdir, config))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for name, value in variables.items():
            save_variables(value, staging / name, dict(bundle_config.model[ppfer.ROLES[name]]))
        write_json_atomically(staging / CONFIG, bundle_config.to_dict())
        write_json_atomically(staging / MANIFEST, _manifest(workdir, config, names, method, staging))
        for path in (staging, *staging.rglob("*")):
            give_default_mode(path, path.is_dir())
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
    return ml_collections.ConfigDict(_tuples(_read_json(path, ValueError, "export: ")))


def cut_config(config, names: tuple[str, ...], expressions: list[str] | None) -> ml_collections.ConfigDict:
    """The run's config reduced to what rebuilds ``names``: no controller spec, no data set, no training."""
    kept = {section: {key: config[section][key] for key in keys} for section, keys in _KEPT.items()}
    kept["data"]["expressions"] = list(expressions) if expressions else None
    models = {}
    for name in names:
        spec = dict(config.model[ppfer.ROLES[name]])
        spec.pop("init_from", None)  # a path on the training machine; the bundle holds the trained weights
        models[ppfer.ROLES[name]] = spec
    return ml_collections.ConfigDict({"dtype": config.dtype, **kept, "model": models})


def format_summary(bundle: Bundle) -> str:
    """What ``ppfer-jax export`` prints: what the bundle holds, the run's numbers, how to use it."""
    size = sum(f.stat().st_size for f in bundle.path.rglob("*") if f.is_file())
    lines = [f"bundle {bundle.path} ({size / 1e6:.1f} MB): {', '.join(bundle.variables)}; "
             f"{bundle.image_size}x{bundle.image_size} px frames, clips of {bundle.num_frames}"]
    results = bundle.manifest.get("evaluation")
    method = bundle.manifest.get("method", "ppfer")
    if results and method in results.get("table1", {}):
        row = results["table1"][method]
        clip = f", adaptive clip PLR {row['adaptive_plr_clip']:.1%}" if "adaptive_plr_clip" in row else ""
        lines.append(f"  the run's test numbers ({method}): PLR {row['plr']:.1%} (chance {results['chance_plr']:.1%}), "
                     f"adaptive frame PLR {row['adaptive_plr']:.1%}{clip}, ACC {row['acc']:.1%} (chance "
                     f"{results['chance_acc']:.1%})")
    flag = " --predictions" if bundle.has_utility else ""
    lines.append(f"  use it: ppfer-jax anonymize VIDEO... --bundle {bundle.path} -o OUT{flag}")
    return "\n".join(lines)


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
        from data_pipelines.synthetic import EXPRESSIONS
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
        "sha256": {f"{name}/{VARIABLES}": _sha256(staging / name / VARIABLES) for name in names},
    }


def _versions() -> dict:
    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None
    return {"ppfer-jax": version("ppfer-jax"), "jax": jax.__version__, "jaxlib": version("jaxlib"),
            "flax": version("flax"), "python": platform.python_version()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def _read_json(path: Path, error: type[Exception], prefix: str = ""):
    """The JSON in ``path``; a damaged file raises ``error`` naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as reason:
        raise error(f"{prefix}{path} is not valid JSON ({reason})") from None


def _tuples(value):
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


# ----------------------------------------------------------------------------------------------------------------
# Load


@dataclasses.dataclass(frozen=True, eq=False)
class Bundle:
    """A loaded bundle: its manifest, config and variables ({network: {'params', 'batch_stats'}})."""

    path: Path
    manifest: dict
    config: ml_collections.ConfigDict
    variables: dict

    @property
    def image_size(self) -> int:
        return int(self.config.data.image_size)

    @property
    def num_frames(self) -> int:
        """Frames per clip F_u was trained on (``predict``'s clip length); ``anonymise`` takes any length."""
        return int(self.config.data.num_frames)

    @property
    def expressions(self) -> list[str] | None:
        names = self.config.data.get("expressions")
        return list(names) if names else None

    @property
    def has_utility(self) -> bool:
        return UTILITY in self.variables

    @functools.cached_property
    def nets(self) -> ppfer.Nets:
        return ppfer.Nets(self.config)

    def anonymise(self, clips) -> np.ndarray:
        """uint8 clips (B, T, H, W, 3) at the bundle's size -> their privacy-preserved, compensated uint8 clips,
        ``to_uint8(F_fc(merge(F_lpr(low), F_hpr(high))))`` frame by frame, as the evaluation scored them."""
        self._check_clips(clips, "anonymise")
        return np.asarray(self._anonymise_fn({n: self.variables[n] for n in ANONYMISER}, clips))

    def predict(self, anonymised) -> np.ndarray:
        """F_u's expression logits (B, classes) of *anonymised* uint8 clips (``anonymise``'s output, what F_u was
        trained on), each of ``num_frames`` frames."""
        if not self.has_utility:
            raise BundleError(f"bundle {self.path} has no utility model F_u; export it with --with-utility")
        self._check_clips(anonymised, "predict")
        if anonymised.shape[1] != self.num_frames:
            raise ValueError(f"predict: clips of {self.num_frames} frames expected (F_u's training length), "
                             f"got {anonymised.shape[1]}")
        return np.asarray(self._predict_fn(self.variables[UTILITY], anonymised))

    @functools.cached_property
    def _anonymise_fn(self):
        return jax.jit(lambda variables, video: ppfer.to_uint8(ppfer.compensated_clips(self.nets, variables, video)))

    @functools.cached_property
    def _predict_fn(self):
        return jax.jit(lambda variables, video: self.nets.apply(UTILITY, variables, ppfer.to_float(video)))

    def _check_clips(self, clips, what: str) -> None:
        size = self.image_size
        shape = getattr(clips, "shape", None)
        if shape is None or len(shape) != 5 or tuple(shape[2:]) != (size, size, 3) or clips.dtype != np.uint8:
            raise ValueError(f"{what}: expected uint8 clips (B, T, {size}, {size}, 3), got "
                             f"{getattr(clips, 'dtype', type(clips).__name__)} {shape}")


def load_bundle(path: str | os.PathLike) -> Bundle:
    """The bundle in directory ``path``, checked: format version, checksums, every variable's shape."""
    path = Path(path)
    manifest = read_manifest(path)
    config_path = path / CONFIG
    if not config_path.is_file():
        raise BundleError(f"bundle {path}: {CONFIG} is missing")
    config = ml_collections.ConfigDict(_tuples(_read_json(config_path, BundleError)))
    names = tuple(manifest.get("networks", ()))
    missing = [name for name in ANONYMISER if name not in names]
    unknown = [name for name in names if name not in ANONYMISER + (UTILITY,)]
    if missing or unknown:
        raise BundleError(f"{path / MANIFEST}: networks {list(names)}: expected {', '.join(ANONYMISER)} and "
                          f"optionally {UTILITY}")
    nets = ppfer.Nets(config)
    variables = {name: _load_network(path, name, nets, manifest) for name in names}
    return Bundle(path, manifest, config, variables)


def read_manifest(path: Path) -> dict:
    """``manifest.json`` of a bundle, after checking that this version of the package can read it."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise BundleError(f"{path} is not a ppfer-jax bundle: no {MANIFEST} (write one with `ppfer-jax export`)")
    manifest = _read_json(file, BundleError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{file}: not a ppfer-jax bundle manifest (format {FORMAT!r} expected)")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        written_by = (manifest.get("versions") or {}).get("ppfer-jax", "?")
        raise BundleError(f"{file}: bundle format version {version} (written by ppfer-jax {written_by}); this "
                          f"ppfer-jax reads format version {FORMAT_VERSION} only. Export the run again with this "
                          f"version, or install the ppfer-jax that wrote it")
    return manifest


def _load_network(path: Path, name: str, nets: ppfer.Nets, manifest: dict) -> dict:
    file = path / name / VARIABLES
    relative = f"{name}/{VARIABLES}"
    if not file.is_file():
        raise BundleError(f"bundle {path}: {relative} is missing")
    expected = (manifest.get("sha256") or {}).get(relative)
    if expected is not None and _sha256(file) != expected:
        raise BundleError(f"bundle {path}: {relative} is damaged (its sha256 differs from {MANIFEST}'s)")
    target = jax.eval_shape(lambda: nets.init(name, jax.random.key(0)))
    try:
        return load_variables(path / name, target)
    except ValueError as error:
        raise BundleError(f"bundle {path}: {relative} does not fit the network {CONFIG} describes ({error})") from None
