"""Level-1 wavelet split of video frames into a low band and a high band (jaxwt).

The paper's premise is that identity lives mostly in the low-frequency band and
expression dynamics in the high-frequency bands, so each band gets its own
privacy enhancer. ``split`` and ``merge`` are exact inverses (up to float
rounding), jit-able and differentiable, so the whole chain trains end to end.

Layout is channels-last in and out:

* spatial (2-D, per frame): ``(..., H, W, C)`` -> low ``(..., H/2, W/2, C)``
  (LL) and high ``(..., H/2, W/2, 3C)`` = [LH | HL | HH] in pywt's order
  (``dwt2`` returns ``cA, (cH, cV, cD)``), each block holding all C channels;
* spatio-temporal (3-D over T, H, W): ``(..., T, H, W, C)`` -> low
  ``(..., T/2, H/2, W/2, C)`` (``'aaa'``) and high ``(..., T/2, H/2, W/2, 7C)``
  with the seven detail bands in pywt ``wavedecn``'s sorted key order
  (``'aad', 'ada', 'add', 'daa', 'dad', 'dda', 'ddd'``, letters over T, H, W).

The 3-D transform is computed separably (2-D over H, W, then 1-D over T), which
is mathematically the same as ``jaxwt.wavedec3`` and ~10x faster on CPU.
With orthonormal Haar on [0, 1] images, LL lies in [0, 2] and the detail bands
in [-1, 1] (3-D: low in [0, 2*sqrt(2)]); enhancers must be able to output that.
"""

from __future__ import annotations

import jax.numpy as jnp
import jaxwt

_SPATIAL_KEYS = ("aa", "da", "ad", "dd")  # pywt dwt2: cA, cH, cV, cD
DETAIL_KEYS_3D = ("aad", "ada", "add", "daa", "dad", "dda", "ddd")


def num_high_bands(spatiotemporal: bool) -> int:
    """Number of detail bands stacked into the high band's channels."""
    return 7 if spatiotemporal else 3


def split(frames: jnp.ndarray, wavelet: str = "haar", mode: str = "symmetric",
          spatiotemporal: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Splits float frames into (low, high) bands; see the module docstring."""
    _check_float(frames)
    spatial = _dwt2(frames, wavelet, mode)
    if not spatiotemporal:
        return spatial["aa"], _stack_channels([spatial[k] for k in _SPATIAL_KEYS[1:]])
    if frames.ndim < 4:
        raise ValueError(f"spatio-temporal split needs (..., T, H, W, C) frames, got shape {frames.shape}")
    bands = {}
    for key, band in spatial.items():
        approx, detail = jaxwt.wavedec(band, wavelet, mode=mode, level=1, axis=-4)
        bands["a" + key], bands["d" + key] = approx, detail
    return bands["aaa"], _stack_channels([bands[k] for k in DETAIL_KEYS_3D])


def merge(low: jnp.ndarray, high: jnp.ndarray, wavelet: str = "haar",
          spatiotemporal: bool = False) -> jnp.ndarray:
    """Inverse of ``split``: rebuilds channels-last frames from the two bands."""
    details = _unstack_channels(high, low.shape[-1], num_high_bands(spatiotemporal))
    if not spatiotemporal:
        return _idwt2(dict(zip(_SPATIAL_KEYS, [low, *details])), wavelet)
    bands = dict(zip(("aaa", *DETAIL_KEYS_3D), [low, *details]))
    spatial = {key: jaxwt.waverec([bands["a" + key], bands["d" + key]], wavelet, axis=-4)
               for key in _SPATIAL_KEYS}
    return _idwt2(spatial, wavelet)


def _dwt2(frames: jnp.ndarray, wavelet: str, mode: str) -> dict[str, jnp.ndarray]:
    """2-D DWT over (H, W) of channels-last frames; jaxwt wants (..., H, W) last."""
    channels_first = jnp.moveaxis(frames, -1, -3)
    approx, details = jaxwt.wavedec2(channels_first, wavelet, mode=mode, level=1)
    return {k: jnp.moveaxis(b, -3, -1) for k, b in zip(_SPATIAL_KEYS, (approx, *details))}


def _idwt2(bands: dict[str, jnp.ndarray], wavelet: str) -> jnp.ndarray:
    channels_first = {k: jnp.moveaxis(b, -1, -3) for k, b in bands.items()}
    coeffs = [channels_first["aa"], tuple(channels_first[k] for k in _SPATIAL_KEYS[1:])]
    return jnp.moveaxis(jaxwt.waverec2(coeffs, wavelet), -3, -1)


def _stack_channels(bands: list[jnp.ndarray]) -> jnp.ndarray:
    return jnp.concatenate(bands, axis=-1)


def _unstack_channels(high: jnp.ndarray, channels: int, count: int) -> list[jnp.ndarray]:
    if high.shape[-1] != channels * count:
        raise ValueError(f"high band must have {count} x {channels} = {count * channels} channels "
                         f"(one block per detail band), got shape {high.shape}")
    return jnp.split(high, count, axis=-1)


def _check_float(frames: jnp.ndarray) -> None:
    # jaxwt silently returns zeros for integer input; refuse it instead.
    if not jnp.issubdtype(frames.dtype, jnp.floating):
        raise TypeError(f"wavelets.split expects float frames in [0, 1], got dtype {frames.dtype}; "
                        "convert uint8 clips with frames.astype(jnp.float32) / 255 first")
