"""Inference bundles: the trained anonymiser of a run, alone, in one directory (written by ``export.py``).

A deployment needs F_lpr, F_hpr and F_fc (and F_u to read expressions), never the
controllers, the validator, the attacker or the training data: a bundle holds only
those networks and the part of the run's config that rebuilds them::

    BUNDLE/
      manifest.json              format version, versions, date, the run's evaluation numbers, checksums
      config.json                image size, frames per clip, wavelet, compensation, dtype, the networks' specs
      f_low/variables.msgpack    F_lpr (+ spec.json; ``convert.save_variables``' layout)
      f_high/ f_fc/ [f_u/]       (ppfer_robust: r_low/ r_high/, its code autoencoders, instead of f_low/ f_high/)

``config.json`` is the run's config cut down to the keys ``nets.Nets`` reads for these networks, so
``Bundle.anonymise`` runs exactly the chain the evaluation scored. This module is inference only: it imports the
networks (``nets.py``) and nothing from training.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np

from ppfer_jax.convert import load_variables
from ppfer_jax.nets import PRIVATIZERS, Nets, anonymiser_networks, compensated_clips, to_float, to_uint8

FORMAT = "ppfer-jax-bundle"
FORMAT_VERSION = 1  # bump when a bundle written by this version cannot be read by an older one, or vice versa
MANIFEST = "manifest.json"
CONFIG = "config.json"
VARIABLES = "variables.msgpack"
UTILITY = "f_u"


class BundleError(ValueError):
    """A directory that is not a usable bundle; the message names the file and what was expected."""


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
    def nets(self) -> Nets:
        return Nets(self.config)

    def anonymise(self, clips) -> np.ndarray:
        """uint8 clips (B, T, H, W, 3) at the bundle's size -> their privacy-preserved, compensated uint8 clips,
        ``to_uint8(F_fc(merge(F_lpr(low), F_hpr(high))))`` frame by frame, as the evaluation scored them."""
        self._check_clips(clips, "anonymise")
        return np.asarray(self._anonymise_fn({n: v for n, v in self.variables.items() if n != UTILITY}, clips))

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
        return jax.jit(lambda variables, video: to_uint8(compensated_clips(self.nets, variables, video)))

    @functools.cached_property
    def _predict_fn(self):
        return jax.jit(lambda variables, video: self.nets.apply(UTILITY, variables, to_float(video)))

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
    config = ml_collections.ConfigDict(with_tuples(read_json(config_path, BundleError)))
    names = tuple(manifest.get("networks", ()))
    chains = [anonymiser_networks(p) for p in PRIVATIZERS]
    if not any(set(names) - {UTILITY} == set(chain) for chain in chains):
        raise BundleError(f"{path / MANIFEST}: networks {list(names)}: expected one anonymiser chain of "
                          f"{' or '.join(', '.join(chain) for chain in chains)}, and optionally {UTILITY}")
    nets = Nets(config)
    variables = {name: _load_network(path, name, nets, manifest) for name in names}
    return Bundle(path, manifest, config, variables)


def read_manifest(path: Path) -> dict:
    """``manifest.json`` of a bundle, after checking that this version of the package can read it."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise BundleError(f"{path} is not a ppfer-jax bundle: no {MANIFEST} (write one with `ppfer-jax export`)")
    manifest = read_json(file, BundleError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{file}: not a ppfer-jax bundle manifest (format {FORMAT!r} expected)")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        written_by = (manifest.get("versions") or {}).get("ppfer-jax", "?")
        raise BundleError(f"{file}: bundle format version {version} (written by ppfer-jax {written_by}); this "
                          f"ppfer-jax reads format version {FORMAT_VERSION} only. Export the run again with this "
                          f"version, or install the ppfer-jax that wrote it")
    return manifest


def _load_network(path: Path, name: str, nets: Nets, manifest: dict) -> dict:
    file = path / name / VARIABLES
    relative = f"{name}/{VARIABLES}"
    if not file.is_file():
        raise BundleError(f"bundle {path}: {relative} is missing")
    expected = (manifest.get("sha256") or {}).get(relative)
    if expected is not None and file_sha256(file) != expected:
        raise BundleError(f"bundle {path}: {relative} is damaged (its sha256 differs from {MANIFEST}'s)")
    target = jax.eval_shape(lambda: nets.init(name, jax.random.key(0)))
    try:
        return load_variables(path / name, target)
    except ValueError as error:
        raise BundleError(f"bundle {path}: {relative} does not fit the network {CONFIG} describes ({error})") from None


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


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_json(path: Path, error: type[Exception], prefix: str = ""):
    """The JSON in ``path``; a damaged file raises ``error`` naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as reason:
        raise error(f"{prefix}{path} is not valid JSON ({reason})") from None


def with_tuples(value):
    if isinstance(value, dict):
        return {key: with_tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(with_tuples(item) for item in value)
    return value
