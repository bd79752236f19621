"""PyTorch state dicts onto our Flax variables: torchvision ResNet / R3D-18, milesial U-Net, U-ViT, and
facenet-pytorch's MTCNN networks (``mtcnn_pnet``, ``mtcnn_rnet``, ``mtcnn_onet``; ``face_detection`` converts the
three at once).

A torch key is renamed to our module path by a short per-model regex list; its
leaf is then matched against the *target* tree (the abstract variables of the
configured model), which says whether ``weight`` is a conv/dense ``kernel``, a
norm ``scale`` or an ``embedding``:

    conv weight (O, I, kh, kw[, kd])  -> kernel (kh, kw[, ...], I, O)   OIHW -> HWIO, OIDHW -> DHWIO
    ConvTranspose weight (I, O, kh, kw) -> kernel flipped in space, (kh, kw, I, O)
    linear weight (O, I)              -> kernel (I, O)
    BatchNorm running_mean / var      -> batch_stats mean / var  (num_batches_tracked dropped)
    PReLU weight (C,)                 -> negative_slope (C,)

Every target leaf must be filled with the right shape, and every torch tensor used;
otherwise one ``ValueError`` lists the offending keys. The classification head is
the exception: when its shape differs (another class count) it keeps its fresh
initialisation and a log line says so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
from flax import serialization
from flax.traverse_util import flatten_dict, unflatten_dict

from data_pipelines.files import write_atomically, write_json_atomically

_RESNET = [(r"^conv1\.", "stem_conv."), (r"^bn1\.", "stem_bn."), (r"^stem\.0\.", "stem_conv."),
           (r"^stem\.1\.", "stem_bn."), (r"^layer(\d)\.(\d+)\.", r"stage\1_block\2."),
           (r"\.conv(\d)\.0\.", r".conv\1."), (r"\.conv(\d)\.1\.", r".bn\1."),  # R3D's Conv3d+BN pairs
           (r"\.downsample\.0\.", ".downsample_conv."), (r"\.downsample\.1\.", ".downsample_bn."),
           (r"^fc\.", "head.")]
_UNET = [(r"maxpool_conv\.1\.", "conv."), (r"double_conv\.0\.", "conv1."), (r"double_conv\.1\.", "bn1."),
         (r"double_conv\.3\.", "conv2."), (r"double_conv\.4\.", "bn2."), (r"^outc\.conv\.", "outc.")]
_UVIT = [(r"^patch_embed\.proj\.", "patch_embed."), (r"^(in|out)_blocks\.(\d+)\.", r"\1_blocks_\2."),
         (r"^time_embed\.(\d)\.", r"time_embed_\1.")]
RENAMES = {"resnet18": _RESNET, "resnet34": _RESNET, "resnet50": _RESNET, "r3d_18": _RESNET,
           "unet": _UNET, "uvit": _UVIT,
           # models/mtcnn.py keeps facenet-pytorch's module names: nothing to rename
           "mtcnn_pnet": [], "mtcnn_rnet": [], "mtcnn_onet": []}
HEADS = {"resnet18": "head", "resnet34": "head", "resnet50": "head", "r3d_18": "head"}
MODELS = tuple(RENAMES)


def load_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A ``.pth`` file's tensors as float32 numpy arrays (weights only; no code is unpickled).

    Accepts a bare state dict or one wrapped as ``{'state_dict': ...}`` / ``{'model': ...}``, and strips
    DataParallel's ``module.`` prefix.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"convert: no checkpoint file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a bad file
        raise ValueError(f"convert: {path} is not a readable PyTorch checkpoint ({error})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ValueError(f"convert: {path} holds a {type(state).__name__}, expected a state dict of tensors")
    return {re.sub(r"^module\.", "", k): v.detach().float().numpy() for k, v in state.items()
            if hasattr(v, "detach")}


def torch_to_flax(state_dict: Mapping[str, np.ndarray], model: str, target: Mapping) -> dict:
    """Our {'params', 'batch_stats'} for ``model`` from a torch state dict, shaped like ``target``.

    ``target``: the model's variables (arrays or ShapeDtypeStructs, e.g. from ``jax.eval_shape(init)``);
    its values also serve as the fresh head when the class count differs.
    """
    if model not in RENAMES:
        raise ValueError(f"convert: model must be one of {', '.join(MODELS)}, got {model!r}")
    wanted = flatten_dict({k: v for k, v in target.items() if k in ("params", "batch_stats")})
    out, unused, mismatched, misfits = {}, [], [], set()
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        placed = _place(key, np.asarray(value), model, wanted)
        if placed is None:
            unused.append(key)
            continue
        path, array = placed
        if array.shape != tuple(wanted[path].shape):
            if path[1] == HEADS.get(model):
                print(f"convert: head {key} {array.shape} replaced by a fresh {tuple(wanted[path].shape)} head")
                continue
            mismatched.append(f"{key} {tuple(np.shape(value))} -> {'/'.join(path)} expects "
                              f"{tuple(wanted[path].shape)} (ours; torch layout differs)")
            misfits.add(path)
            continue
        out[path] = array
    heads = {p for p in wanted if p[1] == HEADS.get(model) and p not in out}
    missing = [f"{'/'.join(p)} {tuple(wanted[p].shape)}" for p in wanted
               if p not in out and p not in heads and p not in misfits]
    problems = ([f"mis-shaped: {', '.join(mismatched)}"] if mismatched else []) + (
        [f"missing from the checkpoint: {', '.join(missing)}"] if missing else []) + (
        [f"not used by {model}: {', '.join(unused)}"] if unused else [])
    if problems:
        raise ValueError(f"convert: the state dict does not fit {model}: " + "; ".join(problems))
    for path in heads:  # a fresh head, from the target's own initialisation
        out[path] = np.asarray(wanted[path])
    return unflatten_dict({p: jax.numpy.asarray(v, dtype=wanted[p].dtype) for p, v in out.items()})


def _place(key: str, value: np.ndarray, model: str, wanted: Mapping) -> tuple[tuple, np.ndarray] | None:
    """(our path, converted array) of one torch tensor, or None when the target has no such leaf."""
    module, _, leaf = key.rpartition(".")
    name = module + "."
    for pattern, replacement in RENAMES[model]:
        name = re.sub(pattern, replacement, name)
    path = tuple(p for p in name.split(".") if p)
    if not module:  # a bare parameter, e.g. U-ViT's pos_embed
        path, leaf = (), key
    if leaf in ("running_mean", "running_var"):
        return ("batch_stats", *path, leaf.removeprefix("running_")), value
    if leaf == "bias":
        return ("params", *path, "bias"), value
    if leaf != "weight":
        candidate = ("params", *path, leaf)
        return (candidate, value) if candidate in wanted else None
    for our_leaf in ("kernel", "scale", "embedding", "negative_slope"):
        candidate = ("params", *path, our_leaf)
        if candidate in wanted:
            break
    else:
        return None
    if our_leaf == "kernel":
        if value.ndim == 2:
            value = value.T
        elif path[-1] == "up":  # ConvTranspose2d (in, out, kh, kw): a flipped, transposed conv kernel
            value = np.transpose(value, (2, 3, 0, 1))[::-1, ::-1]
        else:
            value = np.moveaxis(value, (0, 1), (-1, -2))
    return candidate, np.ascontiguousarray(value)


def save_variables(variables: Mapping, out_dir: str | Path, spec: Mapping) -> Path:
    """Writes ``variables.msgpack`` and ``spec.json`` (the model spec they fit) into ``out_dir``."""
    out_dir = Path(out_dir)
    data = serialization.msgpack_serialize(jax.device_get(dict(variables)))
    write_atomically(out_dir / "variables.msgpack", lambda file: file.write(data))
    write_json_atomically(out_dir / "spec.json", dict(spec))
    return out_dir


def load_variables(directory: str | Path, target: Mapping) -> dict:
    """Variables written by ``save_variables``, checked against ``target`` (a fresh init of the model)."""
    directory = Path(directory)
    path = directory / "variables.msgpack"
    if not path.is_file():
        raise FileNotFoundError(f"init_from: no {path.name} in {directory} (write one with `ppfer-jax convert`)")
    loaded = serialization.msgpack_restore(path.read_bytes())
    got = {k: v.shape for k, v in flatten_dict(loaded).items()}
    want = {k: tuple(v.shape) for k, v in flatten_dict({k: target[k] for k in ("params", "batch_stats")
                                                        if target.get(k)}).items()}
    if got != want:
        spec = json.loads((directory / "spec.json").read_text()) if (directory / "spec.json").exists() else "?"
        diff = sorted({"/".join(k) for k in set(got) ^ set(want)} |
                      {"/".join(k) for k in set(got) & set(want) if got[k] != want[k]})
        raise ValueError(f"init_from: {directory} (spec {spec}) does not fit the configured model; differing "
                         f"leaves: {', '.join(diff[:10])}{' ...' if len(diff) > 10 else ''}")
    return {k: jax.tree.map(jax.numpy.asarray, loaded.get(k, {})) for k in ("params", "batch_stats")}
