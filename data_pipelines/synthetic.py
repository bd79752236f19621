"""Built-in synthetic talking-face video set: the whole method runs with no download.

Every clip is rendered procedurally and deterministically from ``(seed, split, index)``;
nothing is stored. It models what the paper relies on:

* **identity** is fixed per person and carried by both wavelet bands: low-frequency
  traits (face and jaw shape, head size, skin tone, hair colour, volume and hairline,
  eye spacing, nose length, mouth shape, background tint) and high-frequency ones
  (skin grain, freckles and moles, fine wrinkle lines, eyebrow thickness, glasses
  frames, hair strands), painted in face coordinates so they move with the head;
* **expression** (the six CREMA-D classes) is a temporal trajectory of facial actions
  -- mouth curvature, opening and stretch, brow height and tilt, eye openness, nose
  wrinkle -- going rest -> apex -> rest with random intensity, onset and duration, on
  top of a talking mouth and blinks, so one frame is more often ambiguous than the
  clip. Classes differ in timing and secondary actions as well as apex shape (anger
  and disgust both lower the brows; fear and sad both raise their inner ends);
* **nuisance**: head translation, scale and roll drifting over the clip; light gain,
  gradient and colour balance; sensor noise.

Splits: ``train``, ``val`` and ``test`` show the same people (closed set, as CREMA-D in
the paper; ``val`` selects checkpoints, so only the final evaluation reads ``test``);
``wild`` shows other people (the DFEW stand-in for the expression controller), labelled
0..num_wild_identities-1; ``openset`` yet others, whom no stage trains on (the open-set test
of ``reproduce``). Clip ``index`` of a split belongs to identity ``index // clips_per_identity``
and shows ``EXPRESSIONS[index % 6]``, so each split is balanced over identity x expression.

The renderer's inputs are kept apart -- ``identity_traits``,
``expression_trajectory``, ``sample_nuisance`` -> ``render_clip`` -- so a clip can
be re-rendered with an outside person's traits
(``SyntheticFaces.render_with_identity``, the oracle face-swap baseline).
"""

from __future__ import annotations

import dataclasses
import functools
import operator

import numpy as np

from data_pipelines.labels import EXPRESSIONS

SPLITS = ("train", "val", "test", "wild", "openset")
ACTIONS = ("mouth_curve", "mouth_open", "mouth_stretch", "brow_raise", "brow_tilt", "eye_open", "nose_wrinkle")

_SPLIT_CODE = {"train": 0, "test": 1, "wild": 2, "val": 3, "openset": 4}
# train, val and test show the same people; wild and openset each other people
_POPULATION = {"train": 0, "val": 0, "test": 0, "wild": 1, "openset": 2}
_TRAITS_STREAM, _CLIP_STREAM = 1, 2  # keep person draws and clip draws apart for equal numbers
_CLIP_ID_SPLIT_SHIFT = 40  # clip_id = split code << 40 | index: unique over the splits of a spec

_DETAIL_EXTENT = 1.5  # the detail map covers face coordinates [-1.5, 1.5]^2
_GRAIN_CELL = 0.1  # skin-grain lattice spacing in face units: about a pixel at 32 px
_GRAIN_CELLS = round(2 * _DETAIL_EXTENT / _GRAIN_CELL)
_WRINKLE_HALF_WIDTH = 0.012
_CREASE_HALF_WIDTH = 0.015
_FEATURE_BOX = (0.85, -0.75, 1.0)  # |u| and v bounds of every feature drawn over the face

_LIGHT_SKIN = np.array([0.96, 0.80, 0.69], np.float32)
_DARK_SKIN = np.array([0.42, 0.28, 0.20], np.float32)
_HAIR_COLOURS = np.array([[0.08, 0.06, 0.05], [0.24, 0.15, 0.08], [0.45, 0.30, 0.16], [0.85, 0.70, 0.42],
                          [0.58, 0.25, 0.10], [0.72, 0.72, 0.70]], np.float32)
_IRIS_COLOURS = np.array([[0.30, 0.18, 0.08], [0.25, 0.45, 0.70], [0.30, 0.50, 0.30], [0.12, 0.08, 0.05]],
                         np.float32)
_SCLERA = np.array([0.93, 0.91, 0.88], np.float32)
_MOUTH_INSIDE = np.array([0.28, 0.06, 0.08], np.float32)
_TEETH = np.array([0.92, 0.90, 0.82], np.float32)
_GLASSES = np.array([0.08, 0.08, 0.10], np.float32)
_FRECKLE_TINT = np.array([0.8, 1.0, 1.1], np.float32)  # darkens blue most: brown spots


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Size of the synthetic set; per-identity clip counts are multiples of the 6 expressions.

    ``num_identities=91, clips_per_identity_train=60, clips_per_identity_test=24``
    gives a CREMA-D-shaped set (91 actors, 5,460 / 2,184 clips; CREMA-D: 5,210 / 2,232).
    """

    num_identities: int = 12
    num_wild_identities: int = 12
    clips_per_identity_train: int = 24
    clips_per_identity_test: int = 12
    clips_per_identity_wild: int = 12
    clips_per_identity_val: int = 6
    num_openset_identities: int = 6
    clips_per_identity_openset: int = 6
    num_frames: int = 8
    image_size: int = 32
    seed: int = 0

    def __post_init__(self):
        _check_int("num_identities", self.num_identities, minimum=2)
        _check_int("num_wild_identities", self.num_wild_identities, minimum=1)
        _check_int("num_openset_identities", self.num_openset_identities, minimum=2)
        for split in SPLITS:
            name = f"clips_per_identity_{split}"
            _check_int(name, getattr(self, name), minimum=len(EXPRESSIONS))
            if getattr(self, name) % len(EXPRESSIONS):
                raise ValueError(f"{name}: expected a multiple of {len(EXPRESSIONS)} (one clip per expression "
                                 f"per round), got {getattr(self, name)}")
        _check_int("num_frames", self.num_frames, minimum=2)
        _check_int("image_size", self.image_size, minimum=16)
        if self.image_size % 2:
            raise ValueError(f"image_size: expected an even number (one Haar level halves it), got {self.image_size}")
        _check_int("seed", self.seed, minimum=0)
        if self.seed >= 2**63:
            raise ValueError(f"seed: expected an integer below 2**63, got {self.seed}")

    def identities(self, split: str) -> int:
        """Number of people in a split (train, val and test share theirs)."""
        return {"wild": self.num_wild_identities, "openset": self.num_openset_identities}.get(
            _check_split(split), self.num_identities)

    def clips_per_identity(self, split: str) -> int:
        return getattr(self, f"clips_per_identity_{_check_split(split)}")

    def num_clips(self, split: str) -> int:
        return self.identities(split) * self.clips_per_identity(split)


def spec_from_config(config) -> SyntheticSpec:
    """The spec named by a config's ``data`` block (``configs/synthetic.py``) and its ``seed``."""
    data = config.data
    if data.get("num_expressions", len(EXPRESSIONS)) != len(EXPRESSIONS):
        raise ValueError(f"config data.num_expressions: the synthetic set has {len(EXPRESSIONS)} "
                         f"({', '.join(EXPRESSIONS)}), got {data.num_expressions}")
    return SyntheticSpec(
        num_identities=data.num_identities,
        num_wild_identities=data.num_wild_identities,
        clips_per_identity_train=data.clips_per_identity_train,
        clips_per_identity_test=data.clips_per_identity_test,
        clips_per_identity_wild=data.clips_per_identity_wild,
        clips_per_identity_val=data.clips_per_identity_val,
        num_openset_identities=data.get("num_openset_identities", SyntheticSpec.num_openset_identities),
        clips_per_identity_openset=data.get("clips_per_identity_openset", SyntheticSpec.clips_per_identity_openset),
        num_frames=data.num_frames,
        image_size=data.image_size,
        seed=config.seed,
    )


# ----------------------------------------------------------------------------------------------------------------
# Identity


@dataclasses.dataclass(frozen=True, eq=False)
class Traits:
    """One person's fixed look. Face coordinates: face centre 0, half face height 1, v points down."""

    # Low-frequency: shape, size, colour.
    head_scale: float  # half face height as a fraction of half the image
    face_width: float  # half width of the face ellipse
    face_height: float
    jaw: float  # taper of the lower face: 0 is an oval, larger is a narrower chin
    skin: np.ndarray  # RGB in [0, 1]
    lips: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    background: np.ndarray
    hair_volume: float  # how far the hair stands off the head
    hair_length: float  # lowest v the hair reaches beside the face
    hairline: float  # v of the hairline at the centre (below -1: bald)
    hairline_curve: float
    hairline_tilt: float  # side parting
    eye_spacing: float  # |u| of the eye centres
    eye_height: float
    eye_width: float
    nose_length: float
    nose_width: float
    mouth_width: float
    mouth_height: float
    # High-frequency: fine texture and thin structures.
    brow_gap: float
    brow_thickness: float
    brow_arch: float
    lip_thickness: float
    glasses: float  # frame half-thickness, 0 for none
    skin_grain: float  # amplitude of the grain lattice on the skin
    grain: np.ndarray  # (_GRAIN_CELLS, _GRAIN_CELLS) standard normal lattice
    freckles: np.ndarray  # (N, 3): u, v, radius
    freckle_darkness: float
    moles: np.ndarray  # (M, 3): u, v, radius
    wrinkles: np.ndarray  # (K, 4) line segments u0, v0, u1, v1
    wrinkle_depth: float
    stubble: float
    hair_strands: np.ndarray  # amplitude, period, angle


_VARIABLE_LENGTH_TRAITS = ("grain", "freckles", "moles", "wrinkles")


def trait_vector(traits: Traits) -> np.ndarray:
    """The fixed-length traits (every scalar and colour) as one float32 vector, to compare people."""
    return np.concatenate([np.ravel(np.asarray(getattr(traits, field.name), np.float32))
                           for field in dataclasses.fields(traits) if field.name not in _VARIABLE_LENGTH_TRAITS])


def identity_traits(spec: SyntheticSpec, split: str, identity: int) -> Traits:
    """The traits of person ``identity`` of a split; train, val and test share people, wild has its own."""
    count = spec.identities(split)
    if not 0 <= identity < count:
        raise ValueError(f"identity: expected 0 <= identity < {count} for split {split!r}, got {identity}")
    return _sample_traits(spec.seed, _POPULATION[split], int(identity))


@functools.lru_cache(maxsize=4096)
def _sample_traits(seed: int, population: int, identity: int) -> Traits:
    rng = np.random.default_rng(np.random.SeedSequence([seed, _TRAITS_STREAM, population, identity]))
    uniform = rng.uniform
    face_width, face_height, jaw = uniform(0.62, 0.80), uniform(0.90, 1.00), uniform(0.0, 0.35)
    skin = _jitter_colour(rng, _LIGHT_SKIN + uniform() * (_DARK_SKIN - _LIGHT_SKIN), 0.04)
    eye_spacing, eye_height, eye_width = uniform(0.25, 0.35), uniform(-0.12, -0.02), uniform(0.10, 0.14)
    nose_length, nose_width = uniform(0.22, 0.34), uniform(0.05, 0.08)
    mouth_width, mouth_height = uniform(0.17, 0.25), eye_height + nose_length + uniform(0.15, 0.22)
    age = uniform()
    bald = uniform() < 0.1
    return Traits(
        # A tight face crop, as FER data sets align faces: with the whole head in view (0.68-0.80)
        # expressions moved 1-2 px at 32 px and an R3D-18 stayed at chance on them.
        head_scale=uniform(1.05, 1.20),
        face_width=face_width,
        face_height=face_height,
        jaw=jaw,
        skin=skin,
        lips=np.clip(skin * np.array([1.0, 0.66, 0.68], np.float32) * uniform(0.75, 0.95), 0, 1),
        hair=_jitter_colour(rng, _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], 0.06),
        iris=_jitter_colour(rng, _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))], 0.1),
        background=uniform(0.25, 0.85, 3).astype(np.float32),
        hair_volume=uniform(0.04, 0.22),
        hair_length=uniform(-0.3, 0.9),
        hairline=-1.4 if bald else uniform(-0.78, -0.48),
        hairline_curve=uniform(-0.2, 0.6),
        hairline_tilt=uniform(-0.3, 0.3),
        eye_spacing=eye_spacing,
        eye_height=eye_height,
        eye_width=eye_width,
        nose_length=nose_length,
        nose_width=nose_width,
        mouth_width=mouth_width,
        mouth_height=mouth_height,
        brow_gap=uniform(0.12, 0.18),
        brow_thickness=uniform(0.012, 0.05),
        brow_arch=uniform(0.0, 0.05),
        lip_thickness=uniform(0.02, 0.05),
        glasses=uniform(0.012, 0.024) if uniform() < 0.25 else 0.0,
        skin_grain=uniform(0.02, 0.10),
        grain=rng.standard_normal((_GRAIN_CELLS, _GRAIN_CELLS)).astype(np.float32),
        freckles=_spots(rng, count=rng.integers(0, 40) if uniform() < 0.6 else 0, centre=(0.0, 0.1),
                        spread=(0.28, 0.16), radius=(0.025, 0.05)),
        freckle_darkness=uniform(0.15, 0.35),
        moles=_spots(rng, count=rng.integers(0, 3), centre=(0.0, 0.0), spread=(0.4, 0.35), radius=(0.03, 0.05)),
        wrinkles=_wrinkle_segments(rng, age, eye_spacing, eye_height, eye_width, nose_length, nose_width,
                                   mouth_width, mouth_height),
        wrinkle_depth=0.15 + 0.35 * age,
        stubble=uniform(0.15, 0.4) if uniform() < 0.3 else 0.0,
        hair_strands=np.array([uniform(0.05, 0.25), uniform(0.10, 0.20), uniform(0, np.pi)], np.float32),
    )


def _jitter_colour(rng, colour, spread) -> np.ndarray:
    return np.clip(colour * np.exp(rng.normal(0.0, spread, 3)), 0.0, 1.0).astype(np.float32)


def _spots(rng, count, centre, spread, radius) -> np.ndarray:
    """Round marks scattered over the face: (count, 3) rows of u, v, radius."""
    u = np.clip(rng.normal(centre[0], spread[0], count), -0.55, 0.55)
    v = np.clip(rng.normal(centre[1], spread[1], count), -0.45, 0.55)
    return np.stack([u, v, rng.uniform(*radius, count)], axis=1).astype(np.float32)


def _wrinkle_segments(rng, age, eye_spacing, eye_height, eye_width, nose_length, nose_width, mouth_width,
                      mouth_height) -> np.ndarray:
    """Fine lines at face-relative places (forehead, crow's feet, under the eyes, nose-to-mouth folds).

    Each candidate line is present with probability ``age``.
    """
    candidates = []
    for k in range(3):  # forehead: two halves of a gently arched line
        v, half, sag = -0.40 - 0.08 * k, rng.uniform(0.15, 0.3), rng.uniform(0.0, 0.03)
        candidates += [(-half, v + sag, 0.0, v), (0.0, v, half, v + sag)]
    outer_corner, tip = eye_spacing + eye_width, eye_height + nose_length
    for side in (-1.0, 1.0):
        for k in (-1.0, 1.0):  # crow's feet
            candidates.append((side * (outer_corner + 0.03), eye_height + 0.03 * k,
                               side * (outer_corner + 0.11), eye_height + 0.08 * k))
        candidates.append((side * (eye_spacing - 0.7 * eye_width), eye_height + 0.09,  # under the eye
                           side * (eye_spacing + 0.7 * eye_width), eye_height + 0.07))
        candidates.append((side * (nose_width + 0.06), tip - 0.03, side * (mouth_width + 0.03), mouth_height + 0.06))
    candidates = np.array(candidates, np.float32) + rng.normal(0.0, 0.01, (len(candidates), 4)).astype(np.float32)
    return candidates[rng.uniform(size=len(candidates)) < age]


# ----------------------------------------------------------------------------------------------------------------
# Expression


@dataclasses.dataclass(frozen=True)
class _Motion:
    apex: tuple  # action values at the apex, in ACTIONS order
    rise: tuple  # (low, high) durations as fractions of the clip
    hold: tuple
    fall: tuple
    lead: tuple = (0.0,) * len(ACTIONS)  # how much earlier each action moves (negative: later)
    tremor: float = 0.0


# Acted clips (CREMA-D's sentences, DFEW's emotional moments) show their expression through most of the clip: the
# onset is early and the apex is held for 50-85% of it, so more than half the frames are at the apex and under a
# fifth at rest. (With onsets anywhere up to 0.8 of the clip and short holds, 48% of frames were at rest and a frame
# classifier trained on other people read only 19% of the training people's frames; benchmarks/RESULTS.md.)
_MOTIONS = {  # apex: mouth_curve, mouth_open, mouth_stretch, brow_raise, brow_tilt, eye_open, nose_wrinkle
    "anger": _Motion(apex=(-0.3, 0.0, -0.6, -0.8, 1.2, -0.3, 0.0), rise=(0.06, 0.15), hold=(0.6, 0.85),
                     fall=(0.10, 0.2)),
    "disgust": _Motion(apex=(-0.7, 0.25, 0.1, -0.35, 0.2, -0.5, 1.2), rise=(0.15, 0.25), hold=(0.5, 0.7),
                       fall=(0.15, 0.25), lead=(0, 0, 0, 0, 0, 0, 0.12)),
    "fear": _Motion(apex=(-0.25, 0.6, 0.8, 0.9, -0.7, 0.9, 0.0), rise=(0.04, 0.10), hold=(0.55, 0.8),
                    fall=(0.10, 0.2), tremor=0.25),
    "happy": _Motion(apex=(1.0, 0.35, 0.5, 0.1, 0.0, -0.35, 0.1), rise=(0.15, 0.3), hold=(0.55, 0.75),
                     fall=(0.15, 0.25), lead=(0, 0, 0, 0, 0, -0.1, 0)),
    "neutral": _Motion(apex=(0.0,) * len(ACTIONS), rise=(0.2, 0.4), hold=(0.1, 0.3), fall=(0.2, 0.4)),
    "sad": _Motion(apex=(-0.8, 0.0, -0.1, 0.15, -0.9, -0.35, 0.0), rise=(0.2, 0.35), hold=(0.5, 0.7),
                   fall=(0.2, 0.3)),
}
_APEX_JITTER, _NEUTRAL_DRIFT = 0.15, 0.12
_ONSET = (-0.15, 0.15)  # fraction of the clip: a clip may start with the expression already rising
_INTENSITY = (0.75, 1.15)  # apex scale per clip


def expression_trajectory(rng: np.random.Generator, expression: int, num_frames: int) -> np.ndarray:
    """Facial actions of one clip, float32 (num_frames, len(ACTIONS)): rest -> apex -> rest, talking, blinking."""
    return _trajectory(rng, expression, num_frames)[0]


def _trajectory(rng: np.random.Generator, expression: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(actions, envelope): the envelope (num_frames,) in [0, 1] says how far each frame is towards the apex."""
    if not 0 <= expression < len(EXPRESSIONS):
        raise ValueError(f"expression: expected 0 <= expression < {len(EXPRESSIONS)}, got {expression}")
    motion = _MOTIONS[EXPRESSIONS[expression]]
    t = np.linspace(0.0, 1.0, num_frames, dtype=np.float32)[:, None]
    rise, hold, fall = rng.uniform(*motion.rise), rng.uniform(*motion.hold), rng.uniform(*motion.fall)
    onset = rng.uniform(*_ONSET)
    spread = _NEUTRAL_DRIFT if EXPRESSIONS[expression] == "neutral" else _APEX_JITTER
    apex = rng.uniform(*_INTENSITY) * np.asarray(motion.apex) + rng.normal(0.0, spread, len(ACTIONS))
    envelope = _envelope(t + np.asarray(motion.lead), onset, rise, hold, fall)
    if motion.tremor:
        envelope = envelope * (1.0 + motion.tremor * np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6.3)))
    actions = envelope * apex

    talking = rng.uniform(0.1, 0.35) * 0.5 * (1 - np.cos(2 * np.pi * rng.uniform(1, 3) * t + rng.uniform(0, 6.3)))
    actions[:, ACTIONS.index("mouth_open")] += talking[:, 0]
    if rng.uniform() < 0.5:
        blink = np.exp(-(((t - rng.uniform(0, 1)) / 0.06) ** 2))
        actions[:, ACTIONS.index("eye_open")] -= 1.7 * blink[:, 0]
    return actions.astype(np.float32), _envelope(t, onset, rise, hold, fall)[:, 0].astype(np.float32)


def _envelope(t, onset, rise, hold, fall):
    return _smoothstep((t - onset) / rise) * (1.0 - _smoothstep((t - onset - rise - hold) / fall))


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ----------------------------------------------------------------------------------------------------------------
# Nuisance


@dataclasses.dataclass(frozen=True, eq=False)
class Nuisance:
    """Per-clip head pose, lighting and sensor noise; image coordinates span [-1, 1], y down."""

    centre: np.ndarray  # (T, 2) face centre x, y
    scale: np.ndarray  # (T,) multiplies the person's head_scale
    angle: np.ndarray  # (T,) head roll in radians
    gain: np.ndarray  # (T,) global light level
    light_gradient: np.ndarray  # (2,) relative light change per unit x, y
    colour_balance: np.ndarray  # (3,) per-channel gain
    noise_std: float
    noise_seed: int


# Standard deviations of (per-clip offset, drift over the clip) of the head's position (half-image units),
# log-scale and roll (radians): about +-0.6 px of jitter at 32 px, +-2 px at 112 px.
_HEAD_MOTION = ((0.04, 0.03), (0.03, 0.02), (0.05, 0.03))


def sample_nuisance(rng: np.random.Generator, num_frames: int) -> Nuisance:
    """Head pose that drifts slightly over the clip, a lighting set-up and a noise level."""
    drift = np.linspace(-0.5, 0.5, num_frames, dtype=np.float32)
    shift, scale, roll = _HEAD_MOTION
    centre = rng.normal(0.0, shift[0], 2)[None] + rng.normal(0.0, shift[1], 2)[None] * drift[:, None]
    direction = rng.uniform(0, 2 * np.pi)
    return Nuisance(
        centre=centre.astype(np.float32),
        scale=np.exp(rng.normal(0.0, scale[0]) + rng.normal(0.0, scale[1]) * drift).astype(np.float32),
        angle=(rng.normal(0.0, roll[0]) + rng.normal(0.0, roll[1]) * drift).astype(np.float32),
        gain=(rng.uniform(0.75, 1.15) * (1.0 + rng.normal(0.0, 0.03) * drift)).astype(np.float32),
        light_gradient=(rng.uniform(0.0, 0.3) * np.array([np.cos(direction), np.sin(direction)])).astype(np.float32),
        colour_balance=np.exp(rng.normal(0.0, 0.04, 3)).astype(np.float32),
        noise_std=float(rng.uniform(0.003, 0.02)),
        noise_seed=int(rng.integers(2**63)),
    )


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def render_clip(traits: Traits, actions: np.ndarray, nuisance: Nuisance, image_size: int) -> np.ndarray:
    """Renders a person performing ``actions`` under ``nuisance``: uint8 (T, image_size, image_size, 3).

    Vectorised over frames and pixels in float32, colour planes first (3, T, H, W) so
    every operation runs over long rows; shape edges are anti-aliased from approximate
    signed distances with a one-pixel ramp.
    """
    actions = np.asarray(actions, np.float32)
    if actions.ndim != 2 or actions.shape[1] != len(ACTIONS):
        raise ValueError(f"actions: expected (T, {len(ACTIONS)}) for {ACTIONS}, got shape {actions.shape}")
    if nuisance.centre.shape != (actions.shape[0], 2):
        raise ValueError(f"nuisance.centre: expected ({actions.shape[0]}, 2) to match the actions' "
                         f"{actions.shape[0]} frames, got {nuisance.centre.shape}")
    _check_int("image_size", image_size, minimum=16)
    pose = _face_coordinates(traits, nuisance, image_size)
    frames = _paint_face(traits, {name: actions[:, i, None, None] for i, name in enumerate(ACTIONS)}, pose,
                         _sample_bilinear(_detail_map(traits, image_size), *pose.detail_texel))
    light = _light_field(nuisance, pose) * (255.0 * nuisance.gain[:, None, None])  # straight to 0..255
    frames *= light * _planes(nuisance.colour_balance)
    noise = np.random.default_rng(nuisance.noise_seed).random(frames.shape, np.float32)  # uniform: 5x cheaper
    noise -= 0.5
    noise *= 255.0 * np.sqrt(12.0) * nuisance.noise_std  # a uniform of this width has std noise_std
    frames += noise
    np.clip(frames + 0.5, 0.0, 255.0, out=frames)
    return frames.transpose(1, 2, 3, 0).astype(np.uint8, order="C")


@dataclasses.dataclass(frozen=True)
class _Pose:
    u: np.ndarray  # (T, H, W) face coordinates of every pixel
    v: np.ndarray
    pixel: np.ndarray  # (T, 1, 1) pixel size in face units: the anti-aliasing ramp
    x: np.ndarray  # (1, 1, W) image coordinates
    y: np.ndarray  # (1, H, 1)
    detail_texel: tuple  # column and row of every pixel in the person's detail map


def _face_coordinates(traits: Traits, nuisance: Nuisance, image_size: int) -> _Pose:
    axis = (np.arange(image_size, dtype=np.float32) + 0.5) * (2.0 / image_size) - 1.0
    x, y = axis[None, None, :], axis[None, :, None]
    scale = (traits.head_scale * nuisance.scale)[:, None, None]
    cos, sin = np.cos(nuisance.angle)[:, None, None], np.sin(nuisance.angle)[:, None, None]
    dx, dy = x - nuisance.centre[:, 0, None, None], y - nuisance.centre[:, 1, None, None]
    u, v = (cos * dx + sin * dy) / scale, (cos * dy - sin * dx) / scale
    texel = _detail_texel_size(traits, image_size)
    return _Pose(u=u, v=v, pixel=(2.0 / image_size) / scale, x=x, y=y,
                 detail_texel=((u + _DETAIL_EXTENT) / texel, (v + _DETAIL_EXTENT) / texel))


def _paint_face(person: Traits, act: dict, pose: _Pose, detail: np.ndarray) -> np.ndarray:
    """Paints the layers back to front in linear colour; returns float32 (3, T, H, W)."""
    u, v, pixel = pose.u, pose.v, pose.pixel
    side_u = np.abs(u)  # mirrored features (eyes, brows, ears, nostrils) are drawn once on |u|

    def cover(distance):
        return np.clip(0.5 - distance / pixel, 0.0, 1.0)

    background = _planes(person.background) * (1.06 - 0.12 * (pose.y + 1.0) / 2.0)
    image = np.broadcast_to(background, (3,) + u.shape).astype(np.float32)

    hair_colour = _planes(person.hair) * detail[3]
    hair_outline = _ellipse_distance(u, v + 0.08, person.face_width + person.hair_volume,
                                     person.face_height + person.hair_volume)
    _paint(image, cover(np.maximum(hair_outline, v - person.hair_length)), hair_colour)
    _paint(image, cover(np.maximum(side_u - 0.42 * person.face_width, 0.3 - v)), person.skin * 0.78)  # neck
    ear = _ellipse_distance(side_u - 0.98 * person.face_width, v - person.eye_height - 0.08, 0.08, 0.16)
    _paint(image, cover(ear), person.skin * 0.9)

    jaw_width = person.face_width * (1.0 - person.jaw * np.clip(v, 0.0, 1.0) ** 2)
    chin = np.where(v > 0, person.face_height + 0.2 * np.maximum(act["mouth_open"], 0.0), person.face_height)
    roundness = 1.04 - 0.22 * ((u / person.face_width) ** 2 + (v / person.face_height) ** 2)
    _paint(image, cover(_ellipse_distance(u, v, jaw_width, chin)), _planes(person.skin) * detail[:3] * roundness)

    window = _feature_window(u, v)
    features, u_in, side_in, v_in = image[(slice(None), *window)], u[window], side_u[window], v[window]
    _paint_creases(features, person, act, side_in, v_in, cover)
    _paint_brows(features, person, act, side_in, v_in, cover)
    _paint_eyes(features, person, act, side_in, v_in, cover)
    _paint_nose(features, person, act, side_in, v_in, cover)
    _paint_mouth(features, person, act, u_in, side_in, v_in, cover)
    hairline = person.hairline + person.hairline_curve * u * u + person.hairline_tilt * u
    _paint(image, cover(np.maximum(hair_outline, v - hairline)), hair_colour)
    if person.glasses:
        _paint_glasses(features, person, side_in, v_in, cover)
    return image


def _feature_window(u, v) -> tuple:
    """The pixel box (over all frames) that can hold brows, eyes, nose, mouth and glasses.

    Painting those small layers only there, not over the whole frame, saves about a
    fifth of the rendering time at 112 px.
    """
    inside = ((np.abs(u) < _FEATURE_BOX[0]) & (v > _FEATURE_BOX[1]) & (v < _FEATURE_BOX[2])).any(axis=0)
    rows, columns = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if not len(rows):
        return (slice(None), slice(0, 0), slice(0, 0))
    return (slice(None), slice(max(rows[0] - 2, 0), rows[-1] + 3), slice(max(columns[0] - 2, 0), columns[-1] + 3))


def _paint_creases(image, person, act, side_u, v, cover):
    """Skin creases that deepen with the actions, so expression dynamics reach the high band.

    Forehead lines with raised brows, frown lines with lowered inner brows, and
    nose-to-mouth folds with lifted mouth corners or a wrinkled nose.
    """
    lowest_line = person.eye_height - person.brow_gap - 0.13
    nearest_line = lowest_line - 0.07 * np.clip(np.round((lowest_line - v) / 0.07), 0, 2)
    forehead = np.maximum(np.abs(v - nearest_line) - _CREASE_HALF_WIDTH, side_u - 0.3)
    frown = np.maximum(np.abs(side_u - 0.04) - _CREASE_HALF_WIDTH, np.abs(v - person.eye_height + 0.1) - 0.06)
    tip = person.eye_height + person.nose_length
    fold = _segment_distance(side_u, v, person.nose_width + 0.06, tip - 0.02, 1.1 * person.mouth_width + 0.03,
                             person.mouth_height + 0.04) - _CREASE_HALF_WIDTH
    for distance, action in ((forehead, act["brow_raise"]), (frown, act["brow_tilt"]),
                             (fold, act["mouth_curve"] + 0.5 * act["nose_wrinkle"])):
        _paint(image, 0.7 * np.clip(action, 0.0, 1.0) * cover(distance), person.skin * 0.55)


def _paint_brows(image, person, act, side_u, v, cover):
    inner, outer = person.eye_spacing - 0.9 * person.eye_width, person.eye_spacing + 1.1 * person.eye_width
    along = np.clip((side_u - inner) / (outer - inner), 0.0, 1.0)  # 0 at the inner end, 1 at the outer
    centre_line = (person.eye_height - person.brow_gap - 0.24 * act["brow_raise"]
                   - person.brow_arch * (1.0 - (2.0 * along - 1.0) ** 2)
                   + act["brow_tilt"] * (0.14 * (1.0 - along) - 0.04 * along))
    thickness = person.brow_thickness * (1.2 - 0.5 * along)
    brow = np.maximum(np.abs(v - centre_line) - thickness, np.abs(side_u - (inner + outer) / 2) - (outer - inner) / 2)
    _paint(image, cover(brow), person.hair * 0.55)


def _paint_eyes(image, person, act, side_u, v, cover):
    eye_u, eye_v, width = side_u - person.eye_spacing, v - person.eye_height, person.eye_width
    openness = np.clip(1.0 + 0.8 * act["eye_open"], 0.04, 2.0)
    socket = _ellipse_distance(eye_u, eye_v + 0.01, 1.5 * width, 0.9 * width)
    _paint(image, 0.2 * np.clip(-socket / (0.5 * width), 0.0, 1.0), person.skin * 0.75)  # soft shadow
    eye = _ellipse_distance(eye_u, eye_v, width, 0.5 * width * openness)
    _paint(image, cover(eye), _SCLERA)
    from_centre = np.sqrt(eye_u * eye_u + eye_v * eye_v)
    _paint(image, cover(np.maximum(from_centre - 0.5 * width, eye)), person.iris)
    _paint(image, cover(np.maximum(from_centre - 0.22 * width, eye)), person.iris * 0.15)
    _paint(image, cover(np.abs(eye) - 0.012), person.hair * 0.3)  # lids and lashes


def _paint_nose(image, person, act, side_u, v, cover):
    wrinkle = np.clip(act["nose_wrinkle"], 0.0, 1.0)
    tip = person.eye_height + person.nose_length
    flank = _segment_distance(side_u, v, 0.5 * person.nose_width, person.eye_height + 0.06,
                              1.05 * person.nose_width, tip - 0.04)
    _paint(image, 0.35 * cover(flank - 0.012), person.skin * 0.7)
    nostril = _ellipse_distance(side_u - person.nose_width * (1.0 + 0.25 * wrinkle), v - tip + 0.03 * wrinkle,
                                0.035, 0.02)
    _paint(image, 0.9 * cover(nostril), person.skin * 0.35)
    bridge_lines = np.minimum(np.abs(v - person.eye_height - 0.07), np.abs(v - person.eye_height - 0.11)) - 0.012
    _paint(image, 0.7 * wrinkle * cover(np.maximum(bridge_lines, side_u - 0.07)), person.skin * 0.6)


def _paint_mouth(image, person, act, u, side_u, v, cover):
    width = person.mouth_width * (1.0 + 0.4 * act["mouth_stretch"] + 0.15 * np.maximum(act["mouth_curve"], 0.0))
    across = (u / width) ** 2  # 0 at the middle, 1 at the corners
    inside = np.clip(1.0 - across, 0.0, 1.0)
    centre_line = person.mouth_height - 0.18 * act["mouth_curve"] * across  # a smile lifts the corners
    gap = 0.4 * np.maximum(act["mouth_open"], 0.0) * inside
    upper, lower = centre_line - 0.35 * gap, centre_line + 0.65 * gap
    beside = side_u - width
    lip = person.lip_thickness * np.sqrt(inside)
    _paint(image, cover(np.maximum(np.maximum(upper - lip - v, v - lower - 1.3 * lip), beside)), person.lips)
    opening = np.maximum(np.maximum(upper - v, v - lower), beside)
    _paint(image, cover(opening), _MOUTH_INSIDE)
    _paint(image, cover(np.maximum(opening, v - upper - 0.4 * (lower - upper))), _TEETH)


def _paint_glasses(image, person, side_u, v, cover):
    eye_u, eye_v = side_u - person.eye_spacing, v - person.eye_height
    rim = np.abs(_ellipse_distance(eye_u, eye_v, 1.6 * person.eye_width, 1.15 * person.eye_width)) - person.glasses
    lens_edge = person.eye_spacing - 1.6 * person.eye_width
    bridge = np.maximum(np.abs(v - person.eye_height + 0.02) - person.glasses, side_u - lens_edge)
    arm_start = person.eye_spacing + 1.6 * person.eye_width
    arm = np.maximum(np.abs(eye_v) - person.glasses, np.abs(side_u - (arm_start + person.face_width) / 2)
                     - (person.face_width - arm_start) / 2)
    _paint(image, cover(np.minimum(np.minimum(rim, bridge), arm)), _GLASSES)


def _light_field(nuisance: Nuisance, pose: _Pose) -> np.ndarray:
    return 1.0 + nuisance.light_gradient[0] * pose.x + nuisance.light_gradient[1] * pose.y


def _paint(image, alpha, colour) -> None:
    """Composites ``colour`` (RGB, or planes like ``image``) over ``image`` (3, T, H, W) in place; alpha (T, H, W)."""
    image += alpha * ((_planes(colour) if np.ndim(colour) == 1 else colour) - image)


def _planes(rgb) -> np.ndarray:
    """An RGB triple shaped (3, 1, 1, 1) to broadcast over colour planes (3, T, H, W)."""
    return np.asarray(rgb, np.float32)[:, None, None, None]


def _ellipse_distance(x, y, a, b):
    """Approximate signed distance to an axis-aligned ellipse, exact enough near the edge.

    First order, (r - 1) / |grad r|, bounded below by the distance to the bounding box,
    which keeps a nearly shut eye from smearing a line across the face.
    """
    qx, qy = x / a, y / b
    radius = np.sqrt(qx * qx + qy * qy)
    gradient = np.sqrt((qx / a) ** 2 + (qy / b) ** 2) / np.maximum(radius, 1e-6)
    first_order = (radius - 1.0) / np.maximum(gradient, np.float32(1.0) / np.maximum(a, b, dtype=np.float32))
    return np.maximum(first_order, np.maximum(np.abs(x) - a, np.abs(y) - b))


def _segment_distance(x, y, x0, y0, x1, y1):
    """Unsigned distance to the segment (x0, y0)-(x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    along = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.sqrt((x - x0 - along * dx) ** 2 + (y - y0 - along * dy) ** 2)


def _detail_texel_size(traits: Traits, image_size: int) -> float:
    """Half a pixel at the person's nominal head size, so the map is sampled without aliasing."""
    return 1.0 / (image_size * traits.head_scale)


@functools.lru_cache(maxsize=1024)
def _detail_map(traits: Traits, image_size: int) -> np.ndarray:
    """A person's fine detail over face coordinates: (4, n, n) = skin RGB multipliers and a hair multiplier.

    Painted once per person and size (cached), then sampled per pixel, so freckles,
    wrinkles, grain and strands move rigidly with the head.
    """
    texel = _detail_texel_size(traits, image_size)
    count = int(np.ceil(2 * _DETAIL_EXTENT / texel))
    axis = (np.arange(count, dtype=np.float32) + 0.5) * texel - _DETAIL_EXTENT
    u, v = axis[None, :], axis[:, None]
    grain = _sample_bilinear(traits.grain[None], (u + _DETAIL_EXTENT) / _GRAIN_CELL,
                             (v + _DETAIL_EXTENT) / _GRAIN_CELL)[0]

    def cover(distance):
        return np.clip(0.5 - distance / (2 * texel), 0.0, 1.0)

    def spot_cover(spots):
        distance = np.hypot(u - spots[:, 0, None, None], v - spots[:, 1, None, None]) - spots[:, 2, None, None]
        return np.clip(cover(distance).sum(axis=0), 0.0, 1.0)

    skin = 1.0 + traits.skin_grain * grain
    tip = traits.eye_height + traits.nose_length
    skin = skin * (1.0 - traits.stubble * _smoothstep((v - tip + 0.02) / 0.1) * (0.8 + 0.2 * grain))
    if len(traits.wrinkles):
        segments = traits.wrinkles[:, :, None, None]
        distance = _segment_distance(u, v, *segments.transpose(1, 0, 2, 3)).min(axis=0)
        skin = skin * (1.0 - traits.wrinkle_depth * cover(distance - _WRINKLE_HALF_WIDTH))
    skin = skin * np.ones((3, 1, 1), np.float32)
    tint = _FRECKLE_TINT[:, None, None]
    if len(traits.freckles):
        skin *= 1.0 - traits.freckle_darkness * spot_cover(traits.freckles) * tint
    if len(traits.moles):
        skin *= 1.0 - 0.55 * spot_cover(traits.moles) * tint
    amplitude, period, angle = traits.hair_strands
    hair = 1.0 + amplitude * np.sin(2 * np.pi * (u * np.cos(angle) + v * np.sin(angle)) / period + 1.5 * grain)
    return _blur_121(np.concatenate([skin, hair[None]]).astype(np.float32))


def _blur_121(table: np.ndarray) -> np.ndarray:
    """[1, 2, 1] / 4 blur over the last two axes: the map's texels average to about one pixel's footprint."""
    padded = np.pad(table, ((0, 0), (1, 1), (1, 1)), mode="edge")
    rows = (padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]) / 4
    return (rows[..., :-2] + 2 * rows[..., 1:-1] + rows[..., 2:]) / 4


def _sample_bilinear(table: np.ndarray, column, row) -> np.ndarray:
    """table[:, row, column] of a (C, rows, columns) table, bilinear; texel i is centred at i + 0.5; clamped.

    Gathers from the flattened table with np.take, several times faster than 2-D fancy indexing.
    """
    channels, rows, columns = table.shape
    flat = table.reshape(channels, rows * columns)
    column = np.clip(column - 0.5, 0.0, columns - 1.001)
    row = np.clip(row - 0.5, 0.0, rows - 1.001)
    column_floor, row_floor = np.floor(column), np.floor(row)
    fc, fr = column - column_floor, row - row_floor
    corner = row_floor.astype(np.int32) * columns + column_floor.astype(np.int32)
    top_left, top_right = np.take(flat, corner, axis=1), np.take(flat, corner + 1, axis=1)
    bottom_left, bottom_right = np.take(flat, corner + columns, axis=1), np.take(flat, corner + columns + 1, axis=1)
    top = top_left + fc * (top_right - top_left)
    bottom = bottom_left + fc * (bottom_right - bottom_left)
    return top + fr * (bottom - top)


# ----------------------------------------------------------------------------------------------------------------
# Data source


class SyntheticFaces:
    """A grain random-access source of one split: ``len()`` clips, each a dict

    ``{'video': uint8 (T, H, W, 3), 'identity': int32, 'expression': int32, 'clip_id': int64}``.
    Picklable and stateless apart from caches, so grain worker processes can use it.
    """

    def __init__(self, spec: SyntheticSpec, split: str):
        if not isinstance(spec, SyntheticSpec):
            raise TypeError(f"spec: expected a SyntheticSpec, got {type(spec).__name__}")
        self.spec = spec
        self.split = _check_split(split)
        self._clips_per_identity = spec.clips_per_identity(split)
        self._length = spec.num_clips(split)

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        return f"SyntheticFaces(spec={self.spec!r}, split={self.split!r})"

    def __getitem__(self, index) -> dict:
        index = self._check_index(index)
        identity, _ = self.labels(index)
        traits = identity_traits(self.spec, self.split, identity)
        return self._record(index, render_clip(traits, *self.clip_motion(index), self.spec.image_size))

    def labels(self, index: int) -> tuple[int, int]:
        """(identity, expression) of clip ``index``."""
        index = self._check_index(index)
        return index // self._clips_per_identity, index % len(EXPRESSIONS)

    def clip_motion(self, index: int) -> tuple[np.ndarray, Nuisance]:
        """What clip ``index`` does, apart from who does it: its action trajectory and nuisance."""
        index = self._check_index(index)
        rng = np.random.default_rng(np.random.SeedSequence([self.spec.seed, _CLIP_STREAM, _SPLIT_CODE[self.split],
                                                            index]))
        actions = expression_trajectory(rng, self.labels(index)[1], self.spec.num_frames)
        return actions, sample_nuisance(rng, self.spec.num_frames)

    def expression_intensity(self, index: int) -> np.ndarray:
        """How far each frame of clip ``index`` is towards its expression's apex, float32 (T,) in [0, 1]
        (1: apex; for ``neutral`` the drift's envelope). Lets a measurement split frames into onset, apex, offset."""
        index = self._check_index(index)
        rng = np.random.default_rng(np.random.SeedSequence([self.spec.seed, _CLIP_STREAM, _SPLIT_CODE[self.split],
                                                            index]))
        return _trajectory(rng, self.labels(index)[1], self.spec.num_frames)[1]

    def render_with_identity(self, index: int, traits: Traits) -> dict:
        """Clip ``index`` with the same trajectory and nuisance but performed by ``traits`` (oracle face swap).

        Labels are the original clip's, so the swapped clip can be scored against them.
        """
        if not isinstance(traits, Traits):
            raise TypeError(f"traits: expected Traits (see identity_traits), got {type(traits).__name__}")
        index = self._check_index(index)
        return self._record(index, render_clip(traits, *self.clip_motion(index), self.spec.image_size))

    def _record(self, index: int, video: np.ndarray) -> dict:
        identity, expression = self.labels(index)
        return {
            "video": video,
            "identity": np.int32(identity),
            "expression": np.int32(expression),
            "clip_id": np.int64((_SPLIT_CODE[self.split] << _CLIP_ID_SPLIT_SHIFT) | index),
        }

    def _check_index(self, index) -> int:
        index = operator.index(index)
        if not 0 <= index < self._length:
            raise IndexError(f"index: expected 0 <= index < {self._length} for split {self.split!r}, got {index}")
        return index


def preview_clips(spec: SyntheticSpec, split: str, num_clips: int) -> tuple[list[np.ndarray], list[str]]:
    """``num_clips`` clips of a split, cycling through people and expressions, with a label each."""
    _check_int("num_clips", num_clips, minimum=1)
    source = SyntheticFaces(spec, split)
    people, per_person = spec.identities(split), spec.clips_per_identity(split)
    indices = [(k % people) * per_person + k % per_person for k in range(num_clips)]
    labels = [f"id {identity} · {EXPRESSIONS[expression]}" for identity, expression in map(source.labels, indices)]
    return [source[i]["video"] for i in indices], labels


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer, got {value!r}")  # noqa: TRY004 one error type per bad field
    if value < minimum:
        raise ValueError(f"{name}: expected at least {minimum}, got {value}")
