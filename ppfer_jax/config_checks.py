"""Every value of a config that a stage would trip over, checked before the first stage trains.

A bad value found after twenty minutes of training wastes the twenty minutes; ``check`` reads the whole config
at once and refuses it with one error that lists each bad key, its value and what is expected: step counts, batch
sizes (and their split over the mesh's devices and processes), learning rates, fractions, the image size (what the
Haar level and each U-Net, code autoencoder and U-ViT need of it), clip length, identity and expression counts, and
the synthetic set's own rules.
"""

from __future__ import annotations

import math
import numbers

import jax

from data_pipelines import synthetic
from ppfer_jax.nets import NETWORKS
from ppfer_jax.stage import OPTIMIZERS

SCHEDULES = ("constant", "cosine")


class _Problems(list):
    """The lines of the error: 'key=value: expected ...'."""

    def bad(self, key: str, value, expected: str) -> None:
        self.append(f"{key}={value!r}: expected {expected}")

    def named(self, key: str) -> bool:
        return any(line.startswith(f"{key}=") for line in self)


def check(config, *, stages: tuple[str, ...] | None = None, device_count: int | None = None,
          process_count: int | None = None) -> None:
    """Raises one ValueError naming every bad value of ``config`` (``stages``: the ``config.train`` sections the
    command trains, None: all; ``device_count`` / ``process_count``: those the run will have, by default this
    process's)."""
    problems = problems_of(config, stages=stages, device_count=device_count, process_count=process_count)
    if problems:
        raise ValueError(f"config: {len(problems)} value{'s' if len(problems) > 1 else ''} cannot run:\n  "
                         + "\n  ".join(problems))


def problems_of(config, *, stages: tuple[str, ...] | None = None, device_count: int | None = None,
                process_count: int | None = None) -> list[str]:
    """One line per bad value: 'key=value: expected ...'."""
    devices = jax.device_count() if device_count is None else device_count
    processes = jax.process_count() if process_count is None else process_count
    found = _Problems()
    _data(config, found)
    _training(config, stages, _mesh(config, devices, found), processes, found)
    _image_size(config, found)
    _fractions(config, found)
    return list(found)


def _whole(value, minimum: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def _data(config, found: _Problems) -> None:
    data = config.data
    if not _whole(data.get("num_identities"), 2):
        found.bad("data.num_identities", data.get("num_identities"),
            "at least 2 people with identity labels: the controllers, V_pl and the attackers classify them (CREMA-D "
            "has them; DFEW names none)")
    if not _whole(data.get("num_expressions"), 2):
        found.bad("data.num_expressions", data.get("num_expressions"), "at least 2 expression classes")
    if not _whole(data.get("num_frames"), 2):
        found.bad("data.num_frames", data.get("num_frames"), "a clip length of at least 2 frames")
    if not _whole(data.get("image_size"), 16):
        found.bad("data.image_size", data.get("image_size"), "a frame size of at least 16 px")
    if config.wavelet.get("spatiotemporal"):
        found.bad("wavelet.spatiotemporal", True, "False: the enhancers of this release work frame by frame (the paper's "
            "2-D transform)")
    robust = config.privacy.get("robust")
    if robust is not None and not (_whole(robust.frames_per_clip, 1) and _whole(data.get("num_frames"), 2)
                                   and robust.frames_per_clip <= data.num_frames):
        found.bad("privacy.robust.frames_per_clip", robust.frames_per_clip,
            f"1 to data.num_frames={data.get('num_frames')} frames read of each clip")
    if data.name == "synthetic":
        try:
            synthetic.spec_from_config(config)
        except (ValueError, TypeError) as error:  # the rendered set's own rules (clips per person, seed, ...)
            key, _, rest = str(error).removeprefix("config ").removeprefix("data.").partition(":")
            if not found.named(f"data.{key}"):
                found.append(f"data.{key}={data.get(key)!r}:{rest}")


def _mesh(config, devices: int, found: _Problems) -> int:
    """The number of devices a batch is split over (``parallel.mesh_from_config``'s rule)."""
    mesh = config.mesh
    fsdp, data = mesh.fsdp, mesh.data
    if not _whole(fsdp, 1) or devices % fsdp:
        found.bad("mesh.fsdp", fsdp, f"a divisor of the {devices} devices")
        return 1
    data = devices // fsdp if data == -1 else data
    if not _whole(data, 1) or data * fsdp != devices:
        found.bad("mesh.data", mesh.data, f"-1 or {devices // fsdp}: data x fsdp must use all {devices} devices")
        return 1
    return data * fsdp


def _training(config, stages, batch_devices: int, processes: int, found: _Problems) -> None:
    train = config.train
    if train.get("optimizer") not in OPTIMIZERS:
        found.bad("train.optimizer", train.get("optimizer"), f"one of {', '.join(OPTIMIZERS)}")
    for key in ("log_every", "checkpoint_every"):
        if not _whole(train.get(key), 1):
            found.bad(f"train.{key}", train.get(key), "a positive whole number of steps")
    if not _whole(train.get("loader_workers"), 0):
        found.bad("train.loader_workers", train.get("loader_workers"), "0 or more worker processes")
    split = batch_devices * processes // math.gcd(batch_devices, processes)
    for key, size in [("train.eval_batch_size", train.get("eval_batch_size"))] + [
            (f"train.{name}.batch_size", section.batch_size) for name, section in _stage_sections(train, stages)]:
        if not _whole(size, 1):
            found.bad(key, size, "a positive whole number of clips")
        elif size % split:
            found.bad(key, size, f"a multiple of {split}: the global batch is split over {batch_devices} batch device(s) "
                f"and {processes} process(es)")
    for name, section in _stage_sections(train, stages):
        key = f"train.{name}"
        if not _whole(section.steps, 1):
            found.bad(f"{key}.steps", section.steps, "a positive whole number of steps")
        rate = section.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not math.isfinite(rate) or rate <= 0:
            found.bad(f"{key}.learning_rate", rate, "a positive, finite learning rate")
        every = section.get("eval_every")
        if every is not None and not (_whole(every, 1) and (not _whole(section.steps, 1) or every <= section.steps)):
            found.bad(f"{key}.eval_every", every, f"None or 1 to steps={section.steps}")
        patience = section.get("patience")
        if patience is not None and not (_whole(patience, 1) and every is not None):
            found.bad(f"{key}.patience", patience, "None, or a positive number of evaluations (with eval_every set)")
        if (section.get("schedule") or "constant") not in SCHEDULES:
            found.bad(f"{key}.schedule", section.schedule, f"one of {', '.join(SCHEDULES)}")


def _stage_sections(train, stages):
    return [(name, section) for name, section in train.items() if hasattr(section, "keys") and "steps" in section
            and (stages is None or name in stages)]


def _image_size(config, found: _Problems) -> None:
    """What the Haar level and each configured network need of the frame size: a code autoencoder of depth d
    halves its input d times exactly, a U-ViT cuts it into whole patches, a U-Net of depth d pools it d times
    (padding back up) and needs at least 2**d px; band networks see half the frame."""
    size = config.data.get("image_size")
    if not _whole(size, 16):
        return
    multiples, minimum = {"the Haar level": 2}, {}
    for network in NETWORKS.values():
        spec = config.model.get(network.section)
        if spec is None or network.input == "code":
            continue
        band = 2 if network.input in ("low", "high") else 1
        who = f"model.{network.section} ({spec['name']}{' on Haar bands' if band == 2 else ''})"
        if spec["name"] == "code_autoencoder":
            multiples[who] = band * 2 ** spec["depth"]
        elif spec["name"] == "uvit":
            multiples[who] = band * spec["patch_size"]
        elif spec["name"] == "unet":
            minimum[who] = band * 2 ** spec.get("depth", 4)
    multiple = math.lcm(*multiples.values())
    if size % multiple:
        unmet = [f"{who} needs {need}" for who, need in multiples.items() if size % need]
        found.bad("data.image_size", size, f"a multiple of {multiple} ({'; '.join(unmet)})")
    if size < max(minimum.values(), default=0):
        unmet = [f"{who} needs {need}" for who, need in minimum.items() if size < need]
        found.bad("data.image_size", size, f"at least {max(minimum.values())} px ({'; '.join(unmet)})")


def _fractions(config, found: _Problems) -> None:
    scale = config.train.get("augment", {}).get("resized_crop_scale")
    if scale is not None and not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
        found.bad("train.augment.resized_crop_scale", scale, "None or (low, high) with 0 < low <= high <= 1 (area shares)")
    fractions = [("data.val_fraction", config.data.get("val_fraction"))]
    blur = config.get("baselines", {}).get("blur")
    if blur is not None:
        fractions += [("baselines.blur.plr_tolerance", blur.plr_tolerance),
                      ("baselines.blur.acc_tolerance", blur.acc_tolerance)]
    for key, value in fractions:
        if value is not None and not (isinstance(value, numbers.Real) and 0 < value < 1):
            found.bad(key, value, "a fraction between 0 and 1")
    target = config.privacy.get("selection_target")
    if target is not None and not (isinstance(target, numbers.Real) and target > 0):
        found.bad("privacy.selection_target", target, "a positive multiple of chance")
