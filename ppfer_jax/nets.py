"""The networks of a run, from one table, and the pure functions that chain them.

``NETWORKS`` names every network a stage can train or read: the config section that specifies it, what it reads
(a frame, a wavelet band, a clip) and the fields its job fixes (classes, output channels). ``Nets`` builds the
flax modules from a config and applies them; ``Privatizer`` is how enhancers meet frames (one per Haar band,
merged back, as in the paper, or one on whole frames, as in the ablations without the wavelet). Inference
(``bundle.py``, ``anonymize.py``) needs this module and nothing from training.

Names: c_low / c_high (identity controllers on the low / high band), v_pl (the leakage validator), v_sel (a
second frozen validator that chooses s1's checkpoint, so the reported V_pl never does), c_fc (expression
controller), f_low / f_high (privacy enhancers, U-Net), f_fc (compensator, U-ViT), f_u (utility R3D on clips),
attacker / clip_attacker (fresh identity classifiers on anonymised frames / clips: the adaptive attacks),
openset_attacker / openset_clip_attacker (the same on people no other stage sees, the report's open-set rows),
r_low / r_high (ppfer_robust's band enhancers, code autoencoders), adv_code (its co-trained adversaries on the
code, ``privacy.robust.adversaries`` stacked copies), expression_code (its expression head on the code); for
``reproduce``: f_frame / c_frame (a whole-frame enhancer and its controller), adversary (the
trade-off baseline's), recognizer (the verification check's face embedding, trained on the wild people only),
os_prior / os_suppressor (the open-set method's own recognition prior and its suppression U-Net),
recovery (the threat model's U-Net), narula_t / narula_emotion / narula_identity (the
adversarial CNN of Narula et al.: transformation, emotion head, identity classifier) and vgan_g / vgan_d
(PPRL-VGAN's generator and discriminator).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

from ppfer_jax import wavelets
from ppfer_jax.convert import load_variables
from ppfer_jax.models import build_model


def _identities(c) -> dict:
    return dict(num_classes=c.data.num_identities)


def _wild_identities(c) -> dict:
    return dict(num_classes=c.data.num_wild_identities)


def _openset_identities(c) -> dict:
    return dict(num_classes=c.data.num_openset_identities)


def _expressions(c) -> dict:
    return dict(num_classes=c.data.num_expressions)


def _rgb(c) -> dict:
    return dict(out_channels=3)


def _high_bands(c) -> dict:
    return dict(out_channels=3 * wavelets.num_high_bands(c.wavelet.spatiotemporal))


def _low_band(c) -> dict:
    return dict(out_channels=3, size=c.data.image_size // 2)


def _high_band(c) -> dict:
    return dict(_high_bands(c), size=c.data.image_size // 2)


def _vgan_generator(c) -> dict:
    return dict(num_classes=c.data.num_identities, size=c.data.image_size)


def _vgan_discriminator(c) -> dict:
    return dict(num_classes=c.data.num_identities, num_expressions=c.data.num_expressions)


def _image(c) -> dict:
    return dict(img_size=c.data.image_size, in_channels=3)


@dataclasses.dataclass(frozen=True)
class Network:
    """One network of a run: its config section (``config.model[section]``), its input ('frame', 'low', 'high',
    'clip' or 'code', the two band codes of ``ppfer_robust``'s enhancers side by side), the fields its job fixes,
    and whether it is a stack of copies (``privacy.robust.adversaries``)."""

    section: str
    input: str
    fields: Callable[[object], dict]
    label: str = ""
    stacked: bool = False


NETWORKS = {
    "f_low": Network("enhancer_low", "low", _rgb, "F_lpr  low-band enhancer"),
    "f_high": Network("enhancer_high", "high", _high_bands, "F_hpr  high-band enhancer"),
    "c_low": Network("identity_controller", "low", _identities, "C_lpr  low-band identity ctrl"),
    "c_high": Network("identity_controller", "high", _identities, "C_hpr  high-band identity ctrl"),
    "v_pl": Network("validator", "frame", _identities, "V_pl   leakage validator"),
    "c_fc": Network("expression_controller", "frame", _expressions, "C_fc   expression controller"),
    "f_fc": Network("compensator", "frame", _image, "F_fc   feature compensator"),
    "f_u": Network("utility", "clip", _expressions, "F_u    utility (video FER)"),
    "v_sel": Network("validator", "frame", _identities),
    "attacker": Network("validator", "frame", _identities),
    "clip_attacker": Network("utility", "clip", _identities),
    "openset_attacker": Network("validator", "frame", _openset_identities),
    "openset_clip_attacker": Network("utility", "clip", _openset_identities),
    "r_low": Network("robust_enhancer_low", "low", _low_band),
    "r_high": Network("robust_enhancer_high", "high", _high_band),
    "adv_code": Network("code_adversary", "code", _identities, stacked=True),
    "expression_code": Network("code_expression", "code", _expressions),
    "f_frame": Network("enhancer_frame", "frame", _rgb),
    "c_frame": Network("identity_controller", "frame", _identities),
    "adversary": Network("validator", "frame", _identities),
    "recovery": Network("recovery", "frame", _rgb),
    "recognizer": Network("validator", "frame", _wild_identities),
    "os_prior": Network("validator", "frame", _wild_identities),
    "os_suppressor": Network("open_set_suppressor", "frame", _rgb),
    "narula_t": Network("narula_transformer", "frame", _rgb),
    "narula_emotion": Network("expression_controller", "frame", _expressions),
    "narula_identity": Network("validator", "frame", _identities),
    "vgan_g": Network("pprl_vgan_generator", "frame", _vgan_generator),
    "vgan_d": Network("pprl_vgan_discriminator", "frame", _vgan_discriminator),
}
PAPER_NETWORKS = tuple(name for name, net in NETWORKS.items() if net.label)  # the paper's eight, for `check`


@dataclasses.dataclass(frozen=True)
class Nets:
    """The flax modules of a run's networks, built from the config, and the pure functions chaining them."""

    config: object

    def spec(self, name: str) -> dict:
        """The config's model spec of a network, ``init_from`` included."""
        return dict(self.config.model[NETWORKS[name].section])

    @functools.cached_property
    def modules(self) -> dict:
        """The modules of the networks whose section ``config.model`` has (a bundle: the anonymiser's and F_u's
        only); identity classifiers only where the data set names identities (the recognition prior: where its wild
        people have identity labels; the open-set attackers: where the data has people no stage sees)."""
        c = self.config
        return {name: build_model(self.spec(name), dtype=c.dtype, **net.fields(c))
                for name, net in NETWORKS.items()
                if net.section in c.model and (net.fields is not _identities or c.data.get("num_identities"))
                and (net.fields is not _wild_identities or c.data.get("num_wild_identities"))
                and (net.fields is not _openset_identities or c.data.get("num_openset_identities"))}

    def pretrained(self, name: str) -> dict | None:
        """Variables from the network's ``init_from`` directory (``ppfer-jax convert`` output), else None."""
        directory = self.spec(name).get("init_from")
        if not directory:
            return None
        target = jax.eval_shape(lambda: self.init(name, jax.random.key(0, impl=self.config.rng_impl)))
        return load_variables(Path(directory).expanduser(), target)

    def input_shape(self, name: str) -> tuple[int, ...]:
        """The shape of one example of the network's input."""
        d = self.config.data
        half = d.image_size // 2
        kind = NETWORKS[name].input
        if kind == "code":  # only a config with ppfer_robust's sections has a code
            return (self.code_dim,)
        return {"frame": (d.image_size, d.image_size, 3), "low": (half, half, 3),
                "high": (half, half, _high_bands(self.config)["out_channels"]),
                "clip": (d.num_frames, d.image_size, d.image_size, 3)}[kind]

    @property
    def code_dim(self) -> int:
        """Width of ``ppfer_robust``'s code: its two band encoders' codes side by side."""
        return sum(self.spec(name)["code_dim"] for name in CODE.enhancers)

    def init(self, name: str, key: jax.Array) -> dict:
        """Fresh variables {'params', 'batch_stats'} of one network (of every copy, stacked, for a stack)."""
        if NETWORKS[name].stacked:
            copies = self.config.privacy.robust.adversaries
            return jax.vmap(lambda k: self._init_one(name, k))(jax.random.split(key, copies))
        return self._init_one(name, key)

    def _init_one(self, name: str, key: jax.Array) -> dict:
        dummy = jnp.zeros((1,) + self.input_shape(name), jnp.float32)
        variables = dict(self.modules[name].init(key, dummy, train=False))
        variables.setdefault("batch_stats", {})
        if name == "f_fc" and self.config.compensation.residual:
            variables["params"] = _zero_last_layer(variables["params"])
        return {"params": variables["params"], "batch_stats": variables["batch_stats"]}

    # -- forward passes (eval mode unless said otherwise)

    def apply(self, name: str, variables: dict, x: jax.Array) -> jax.Array:
        return self.modules[name].apply(_vars(variables), x, train=False)

    def apply_train(self, name: str, params, batch_stats, x: jax.Array):
        """Training-mode forward: (output, new batch_stats)."""
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
            out, updates = self.modules[name].apply(variables, x, train=True, mutable=["batch_stats"])
            return out, updates["batch_stats"]
        return self.modules[name].apply(variables, x, train=True), batch_stats

    def bands(self, frames: jax.Array):
        """The Haar bands (low, high) of float frames (N, H, W, 3), frame by frame."""
        w = self.config.wavelet
        return wavelets.split(frames, wavelet=w.name, mode=w.mode, spatiotemporal=False)

    def merge(self, low: jax.Array, high: jax.Array) -> jax.Array:
        return wavelets.merge(low, high, wavelet=self.config.wavelet.name, spatiotemporal=False)

    def privatize(self, frozen: dict, frames: jax.Array) -> jax.Array:
        """G = merge(F_lpr(low), F_hpr(high)) of float frames (..., H, W, 3), frame by frame, with the band
        enhancers ``frozen`` holds (``privatizer_of``)."""
        return privatizer_of(frozen).apply(self, frozen, frames)

    def compensate(self, variables: dict, g: jax.Array) -> jax.Array:
        """C = F_fc(G) frame by frame (G + U-ViT(G) when compensation.residual)."""
        flat, lead = flatten_frames(g)
        out = self.apply("f_fc", variables, flat)
        out = flat + out if self.config.compensation.residual else out
        return out.reshape(lead + out.shape[1:])


@dataclasses.dataclass(frozen=True)
class Privatizer:
    """How privacy enhancers meet the frames: one per Haar band, merged back (the paper), or one on whole frames
    (the ablations without the wavelet transform, Tasks 1-3). ``controllers[i]`` is ``enhancers[i]``'s."""

    enhancers: tuple[str, ...]
    controllers: tuple[str, ...]
    wavelet: bool

    def inputs(self, nets: Nets, frames: jax.Array) -> tuple[jax.Array, ...]:
        """The enhancers' inputs from float frames (N, H, W, 3)."""
        return nets.bands(frames) if self.wavelet else (frames,)

    def combine(self, nets: Nets, outputs) -> jax.Array:
        """Privacy-preserved frames G from the enhancers' outputs."""
        return nets.merge(*outputs) if self.wavelet else outputs[0]

    def apply(self, nets: Nets, variables: dict, frames: jax.Array) -> jax.Array:
        """G of float frames (..., H, W, 3), every enhancer frozen."""
        flat, lead = flatten_frames(frames)
        outputs = [nets.apply(name, variables[name], x) for name, x in zip(self.enhancers, self.inputs(nets, flat))]
        g = self.combine(nets, outputs)
        return g.reshape(lead + g.shape[1:])


WAVELET = Privatizer(("f_low", "f_high"), ("c_low", "c_high"), wavelet=True)
CODE = Privatizer(("r_low", "r_high"), ("c_low", "c_high"), wavelet=True)  # ppfer_robust's code autoencoders
FRAMES = Privatizer(("f_frame",), ("c_frame",), wavelet=False)
PRIVATIZERS = (WAVELET, CODE, FRAMES)


def privatizer_of(variables) -> Privatizer:
    """The privatizer whose enhancers ``variables`` (a dict or names) holds: the paper's U-Nets or the codes."""
    found = [p for p in PRIVATIZERS if set(p.enhancers) <= set(variables)]
    if len(found) != 1:
        raise ValueError(f"expected the enhancers of exactly one of {[p.enhancers for p in PRIVATIZERS]}, got "
                         f"{sorted(variables)}")
    return found[0]


def anonymiser_networks(privatizer: Privatizer) -> tuple[str, ...]:
    """The networks that make an anonymised clip with this privatizer: its enhancers and the compensator."""
    return privatizer.enhancers + ("f_fc",)


def compensated_clips(nets: Nets, frozen: dict, video: jax.Array, privatizer: Privatizer | None = None) -> jax.Array:
    """C = F_fc(merge(F_lpr(low), F_hpr(high))) of uint8 clips, all upstream frozen (``privatizer``: by default the
    one whose enhancers ``frozen`` holds)."""
    privatizer = privatizer or privatizer_of(frozen)
    return nets.compensate(frozen["f_fc"], privatizer.apply(nets, frozen, to_float(video)))


def _vars(variables: dict) -> dict:
    return {k: v for k, v in variables.items() if k == "params" or v}


def _zero_last_layer(params: dict) -> dict:
    """U-ViT with its output layer zeroed: the residual compensator starts as the identity map."""
    last = "final_layer" if "final_layer" in params else "decoder_pred"
    return {**params, last: jax.tree.map(jnp.zeros_like, params[last])}


# -- frames


def flatten_frames(x: jax.Array):
    return x.reshape((-1,) + x.shape[-3:]), x.shape[:-3]


def to_float(video: jax.Array) -> jax.Array:
    return video.astype(jnp.float32) / 255.0


def to_uint8(frames: jax.Array) -> jax.Array:
    """Float frames in [0, 1] (clipped) to uint8 video, rounding: what a video file would hold."""
    return jnp.round(jnp.clip(frames, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def pick_frames(video: jax.Array, index: jax.Array) -> jax.Array:
    """video (B, T, ...) and one frame index per clip (B,) -> (B, ...), or n per clip (B, n) -> (B, n, ...)."""
    per_clip = index.reshape((index.shape[0], -1))
    picked = jnp.take_along_axis(video, per_clip.reshape(per_clip.shape + (1,) * (video.ndim - 2)), axis=1)
    return picked.reshape(index.shape + video.shape[2:])


def random_frames(rng: jax.Array, video: jax.Array, count: int | None = None) -> jax.Array:
    """One random frame of each clip (B, ...), or ``count`` of them, drawn independently (B, count, ...)."""
    shape = (video.shape[0],) if count is None else (video.shape[0], count)
    return pick_frames(video, jax.random.randint(rng, shape, 0, video.shape[1]))
