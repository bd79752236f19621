"""The model families of the method, built from config specs.

A spec is a dict (a config section) with a ``name`` and the module's own fields;
the caller adds what the role fixes (class count, output channels, image size).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ppfer_jax.models.code_autoencoder import MLP, CodeAutoencoder
from ppfer_jax.models.r3d import R3D18, r3d_18
from ppfer_jax.models.resnet import ResNet, resnet18, resnet34, resnet50
from ppfer_jax.models.unet import UNet
from ppfer_jax.models.uvit import UViT, uvit_size
from ppfer_jax.models.vgan import VGANDiscriminator, VGANGenerator

__all__ = ["CodeAutoencoder", "MLP", "R3D18", "ResNet", "UNet", "UViT", "VGANDiscriminator", "VGANGenerator",
           "build_model", "MODEL_NAMES"]


def _uvit(size: str | None = None, **fields: Any) -> UViT:
    """A named size (S/M/L/H/tiny) gives width, depth and heads; explicit fields win."""
    return UViT(**{**(uvit_size(size) if size else {}), **fields})


_BUILDERS = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "r3d_18": r3d_18,
    "unet": UNet,
    "uvit": _uvit,
    "code_autoencoder": CodeAutoencoder,
    "mlp": MLP,
    "vgan_generator": VGANGenerator,
    "vgan_discriminator": VGANDiscriminator,
}
MODEL_NAMES = tuple(_BUILDERS)


def build_model(spec: Mapping[str, Any], dtype: str | jnp.dtype = jnp.float32, **role_fields: Any) -> nn.Module:
    """Builds ``spec['name']`` with the spec's fields plus the role's fields (class count, channels, ...)."""
    fields = dict(spec)
    name = fields.pop("name", None)
    fields.pop("init_from", None)  # where to load weights from (nets.Nets.pretrained), not a model field
    if name not in _BUILDERS:
        raise ValueError(f"model spec name {name!r} is not one of {', '.join(MODEL_NAMES)} (spec: {dict(spec)})")
    clash = sorted(set(fields) & set(role_fields))
    if clash:
        raise ValueError(f"model spec for {name!r} sets {clash}, which its role fixes; remove them from the config")
    try:
        return _BUILDERS[name](**fields, **role_fields, dtype=jnp.dtype(dtype))
    except TypeError as error:
        raise ValueError(f"model spec for {name!r} has a field the model does not take: {error}") from None
