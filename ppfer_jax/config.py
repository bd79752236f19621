"""Configs as code: load a ``get_config(arg)`` file and apply ``key=value`` overrides.

A config is named as big_vision does, ``path/to/file.py[:arg]``. Files under
``configs/`` ship inside the package too, so ``configs/synthetic.py`` resolves
on a fresh ``pip install .`` without a checkout. Overrides may only touch keys
that exist: a typo must stop the run, not silently train something else.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from pathlib import Path

import ml_collections

import configs

DEFAULT_CONFIG = "configs/synthetic.py"


def load_config(spec: str = DEFAULT_CONFIG, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """Loads ``file.py[:arg]``, calls its ``get_config(arg)`` and applies overrides."""
    path, _, arg = spec.partition(":")
    module = _import_file(_resolve(path))
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config(arg) function")
    config = module.get_config(arg or None)
    apply_overrides(config, overrides)
    config.lock()
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> None:
    """Applies ``a.b.c=value`` strings; values are Python literals, else plain strings."""
    for item in overrides:
        key, sep, raw = item.removeprefix("--config.").partition("=")
        if not sep:
            raise ValueError(f"config override {item!r} must look like key=value")
        parent, leaf = _walk_to_parent(config, key)
        value = _coerce(key, parent[leaf], raw)
        with config.unlocked():
            parent[leaf] = value


def _coerce(key: str, old, raw: str):
    """Parses ``raw`` into the type the key already holds (ConfigDict fields are typed)."""
    if isinstance(old, ml_collections.ConfigDict):
        raise ValueError(f"config key {key!r} is a section; override one of its keys: {', '.join(sorted(old))}")
    if isinstance(old, str):
        return raw
    new = parse_value(raw)
    if old is None or type(new) is type(old):
        return new
    if isinstance(old, float) and type(new) is int:
        return float(new)
    if isinstance(old, tuple) and isinstance(new, list):
        return tuple(new)
    raise ValueError(f"config key {key!r} holds {type(old).__name__} {old!r}; "
                     f"override {raw!r} parses as {type(new).__name__}")


def _walk_to_parent(config, dotted: str):
    node, parts = config, dotted.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            near = difflib.get_close_matches(part, known, n=3)
            where = ".".join(parts[:depth]) or "<top level>"
            hint = f"; did you mean {', '.join(near)}?" if near else f"; known keys there: {', '.join(known)}"
            raise KeyError(f"unknown config key {dotted!r}: no {part!r} under {where}{hint}")
        if depth == len(parts) - 1:
            return node, part
        node = node[part]


def parse_value(raw: str):
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _resolve(path: str) -> Path:
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    packaged = Path(configs.__file__).parent / Path(path).name
    if Path(path).parent.name == "configs" and packaged.is_file():
        return packaged
    available = sorted(p.name for p in packaged.parent.glob("*.py") if p.name != "__init__.py")
    raise FileNotFoundError(f"config file {path} not found (cwd {os.getcwd()}); "
                            f"packaged configs: {', '.join('configs/' + a for a in available)}")


def _import_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"_ppfer_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
