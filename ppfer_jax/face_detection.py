"""Finding faces: MTCNN (``models/mtcnn.py``) with its host-side image pyramid, box decoding and NMS.

The rules are facenet-pytorch's ``detect_face`` (read there, written here), so that its shipped weights give
the boxes and landmarks facenet-pytorch's ``MTCNN`` gives (tests/test_face_detection.py checks 1 px):

* pyramid: scales ``12 / min_face * factor**k`` while the shorter side stays >= 12 px; every resize is torch's
  ``interpolate(mode='area')`` (an adaptive average pool), here as a matrix product in the jitted PNet call for
  the pyramid and as exact integral-image means for the RNet / ONet crops;
* PNet cells with face probability >= thresholds[0] become 12x12 windows (stride 2) mapped back to the frame;
  NMS (IoU > 0.5) per scale, then over all scales (0.7); box regression (scaled by width without +1), squared;
* RNet on 24x24 crops of the (clipped) boxes: probability > thresholds[1], NMS 0.7, regression (+1 width),
  squared; ONet on 48x48 crops: probability > thresholds[2], five landmarks, regression, and NMS over the
  smaller box's area (0.7).

Networks run jitted on fixed shapes (a pyramid per frame size, crops padded to a power of two); all else is
numpy. ``convert_mtcnn`` turns facenet-pytorch's ``pnet.pt``/``rnet.pt``/``onet.pt`` (from the installed package
or its wheel, nothing downloaded) into Flax variables once; ``load_detector`` reads them without torch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ppfer_jax.convert import load_torch_state_dict, load_variables, save_variables, torch_to_flax
from ppfer_jax.models.mtcnn import INPUT_SIZES, NETWORKS

MIN_FACE = 20  # px: facenet-pytorch's default smallest face searched for
THRESHOLDS = (0.6, 0.7, 0.7)  # face probability for PNet, RNet, ONet (facenet-pytorch's defaults)
FACTOR = 0.709  # pyramid scale step
DETECTOR_FILE = "detector.json"
DEFAULT_DIR = "~/.cache/ppfer_jax/mtcnn"  # where `anonymize` looks (or $PPFER_JAX_DETECTOR)
_NORMALISE = 0.0078125  # facenet-pytorch: (pixel - 127.5) * 1/128


class DetectorError(ValueError):
    """A detector directory or source that cannot be used; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Faces:
    """The faces of one image: boxes (N, 4) as x0, y0, x1, y1 in pixels, face probabilities (N,), five landmarks
    (N, 5, 2) as x, y (eyes, nose, mouth corners)."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)


NO_FACES = Faces(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 5, 2)))


# ----------------------------------------------------------------------------------------------------------------
# Pure host-side pieces


def pyramid_scales(height: int, width: int, min_face: int = MIN_FACE, factor: float = FACTOR) -> list[float]:
    """The scales at which PNet's 12 px window sees faces from ``min_face`` px up to the whole image."""
    scale, side, scales = 12.0 / min_face, min(height, width) * 12.0 / min_face, []
    while side >= 12:
        scales.append(scale)
        scale, side = scale * factor, side * factor
    return scales


def area_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of torch's adaptive average pool along one axis: output i averages inputs
    floor(i * in / out) to ceil((i + 1) * in / out) (integer arithmetic, as torch)."""
    matrix = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def area_crops(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Crops ``image[y0:y1, x0:x1]`` for integer boxes (N, 4) resized to size x size by area averaging, exactly
    (an integral image in float64), as float32 (N, size, size, 3)."""
    total = np.zeros((image.shape[0] + 1, image.shape[1] + 1, image.shape[2]), np.float64)
    total[1:, 1:] = image.astype(np.float64).cumsum(0).cumsum(1)

    def edges(start, end):  # (N, size + 1) lower and upper pixel edges per output cell
        length = (end - start)[:, None]
        i = np.arange(size)[None]
        return start[:, None] + (i * length) // size, start[:, None] - (-((i + 1) * length) // size)

    y0, y1 = edges(boxes[:, 1], boxes[:, 3])
    x0, x1 = edges(boxes[:, 0], boxes[:, 2])
    r0, r1, c0, c1 = y0[:, :, None], y1[:, :, None], x0[:, None, :], x1[:, None, :]
    sums = total[r1, c1] - total[r0, c1] - total[r1, c0] + total[r0, c0]
    counts = ((r1 - r0) * (c1 - c0))[..., None]
    return (sums / counts).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, overlap: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first. ``union``: torchvision's IoU (areas without +1),
    a box suppressed when IoU > threshold; ``min``: MTCNN's intersection over the smaller box (areas +1), kept
    when <= threshold."""
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    plus = 1.0 if overlap == "min" else 0.0
    x0, y0, x1, y1 = boxes.T
    area = (x1 - x0 + plus) * (y1 - y0 + plus)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + plus)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + plus)
        inter = w * h
        if overlap == "min":
            order = rest[inter / np.minimum(area[i], area[rest]) <= threshold]
        else:
            order = rest[inter / (area[i] + area[rest] - inter) <= threshold]
    return np.asarray(keep, np.int64)


def windows(probability: np.ndarray, regression: np.ndarray, scale: float, threshold: float) -> np.ndarray:
    """PNet's map (h, w) at one scale -> candidate rows [x0, y0, x1, y1, score, 4 regressions] in frame pixels:
    each cell's 12x12 window at stride 2, mapped back by 1 / scale (floored)."""
    ys, xs = np.nonzero(probability >= threshold)
    cells = np.stack([xs, ys], axis=1).astype(np.float32)
    start = np.floor((2 * cells + 1) / scale)
    end = np.floor((2 * cells + 12) / scale)
    return np.concatenate([start, end, probability[ys, xs, None], regression[ys, xs]], axis=1)


def squared(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to the square on its longer side, same centre."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def regressed(boxes: np.ndarray, regression: np.ndarray, plus_one: bool = True) -> np.ndarray:
    """Boxes moved by the networks' regression, in units of the box's width and height."""
    extra = 1.0 if plus_one else 0.0
    w = boxes[:, 2] - boxes[:, 0] + extra
    h = boxes[:, 3] - boxes[:, 1] + extra
    return boxes[:, :4] + regression * np.stack([w, h, w, h], axis=1)


def clipped(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Integer crop windows [x0, y0, x1, y1) of boxes (truncated, as facenet-pytorch's ``pad``) inside the image."""
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x0, y0 = np.maximum(b[:, 0], 1) - 1, np.maximum(b[:, 1], 1) - 1
    x1, y1 = np.minimum(b[:, 2], width), np.minimum(b[:, 3], height)
    return np.stack([x0, y0, x1, y1], axis=1)


def _bucket(n: int) -> int:
    """Crops are padded to a power of two (at least 16) so that RNet / ONet compile for few shapes."""
    return max(16, 1 << (n - 1).bit_length())


# ----------------------------------------------------------------------------------------------------------------
# The detector


@dataclasses.dataclass(frozen=True, eq=False)
class Detector:
    """MTCNN with converted variables ({'pnet', 'rnet', 'onet'} -> {'params': ...})."""

    variables: dict
    min_face: int = MIN_FACE
    thresholds: tuple[float, float, float] = THRESHOLDS
    factor: float = FACTOR
    path: Path | None = None

    def detect(self, image: np.ndarray) -> Faces:
        """Every face in one uint8 (H, W, 3) RGB image."""
        return self.detect_batch(image[None])[0]

    def detect_batch(self, images: np.ndarray, count: int | None = None) -> list[Faces]:
        """Every face in each of N uint8 (N, H, W, 3) images of one size (one PNet call for the batch); with
        ``count``, of the first ``count`` only (the rest pad the batch to a shape already compiled)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"detect: expected uint8 RGB images (N, H, W, 3), got {images.dtype} {images.shape}")
        height, width = images.shape[1:3]
        scales = pyramid_scales(height, width, self.min_face, self.factor)
        count = len(images) if count is None else count
        if not scales:
            return [NO_FACES for _ in range(count)]
        maps = self._pyramid(height, width)(self.variables["pnet"], images)
        maps = [(np.asarray(r), np.asarray(p)) for r, p in maps]
        return [self._refine(images[n], [(r[n], p[n, ..., 1]) for r, p in maps], scales) for n in range(count)]

    def _refine(self, image: np.ndarray, maps, scales) -> Faces:
        rows = []
        for (regression, probability), scale in zip(maps, scales, strict=True):
            candidates = windows(probability, regression, scale, self.thresholds[0])
            rows.append(candidates[nms(candidates[:, :4], candidates[:, 4], 0.5)])
        rows = np.concatenate(rows)
        rows = rows[nms(rows[:, :4], rows[:, 4], 0.7)]
        boxes = squared(regressed(rows[:, :4], rows[:, 5:9], plus_one=False))
        # RNet
        boxes, crops = self._crops(image, boxes, INPUT_SIZES["rnet"])
        if not len(boxes):
            return NO_FACES
        regression, probability = self._run("rnet", crops)
        passed = probability[:, 1] > self.thresholds[1]
        boxes, scores, regression = boxes[passed], probability[passed, 1], regression[passed]
        keep = nms(boxes, scores, 0.7)
        boxes = squared(regressed(boxes[keep], regression[keep]))
        # ONet
        boxes, crops = self._crops(image, boxes, INPUT_SIZES["onet"])
        if not len(boxes):
            return NO_FACES
        regression, landmarks, probability = self._run("onet", crops)
        passed = probability[:, 1] > self.thresholds[2]
        boxes, scores, regression, landmarks = (boxes[passed], probability[passed, 1], regression[passed],
                                                landmarks[passed])
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        points = np.stack([w * landmarks[:, :5] + boxes[:, :1] - 1, h * landmarks[:, 5:] + boxes[:, 1:2] - 1], -1)
        boxes = regressed(boxes, regression)
        keep = nms(boxes, scores, 0.7, overlap="min")
        return Faces(boxes[keep].astype(np.float64), scores[keep].astype(np.float64), points[keep].astype(np.float64))

    def _crops(self, image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The boxes whose clipped window is not empty, and their normalised size x size crops."""
        windows_ = clipped(boxes, *image.shape[:2])
        kept = (windows_[:, 2] > windows_[:, 0]) & (windows_[:, 3] > windows_[:, 1])
        boxes, windows_ = boxes[kept], windows_[kept]
        if not len(boxes):
            return boxes, np.zeros((0, size, size, 3), np.float32)
        return boxes, (area_crops(image, windows_, size) - 127.5) * _NORMALISE

    def _run(self, name: str, crops: np.ndarray):
        n = len(crops)
        padded = np.concatenate([crops, np.zeros((_bucket(n) - n,) + crops.shape[1:], np.float32)])
        return tuple(np.asarray(out)[:n] for out in _apply(name)(self.variables[name], padded))

    @functools.lru_cache(maxsize=8)  # one detector per process, a few frame sizes
    def _pyramid(self, height: int, width: int):
        """PNet on every pyramid level of an (N, height, width, 3) uint8 batch, one jitted call."""
        levels = [(area_matrix(height, int(height * s + 1)), area_matrix(width, int(width * s + 1)))
                  for s in pyramid_scales(height, width, self.min_face, self.factor)]
        pnet = NETWORKS["pnet"]()

        def run(variables, images):
            x = images.astype(jnp.float32)
            out = []
            for rows, cols in levels:
                level = jnp.einsum("oh,nhwc,pw->nopc", rows, x, cols, precision="highest")
                out.append(pnet.apply(variables, (level - 127.5) * _NORMALISE))
            return out

        return jax.jit(run)


@functools.cache
def _apply(name: str):
    return jax.jit(NETWORKS[name]().apply)


def targets() -> dict:
    """The abstract variables of the three networks (what a converted file must fit)."""
    return {name: jax.eval_shape(lambda name=name: NETWORKS[name]().init(
        jax.random.key(0), jnp.zeros((1, INPUT_SIZES[name], INPUT_SIZES[name], 3)))) for name in NETWORKS}


# ----------------------------------------------------------------------------------------------------------------
# Converting and loading


def facenet_weights(source: str | os.PathLike | None = None) -> tuple[dict[str, Path], str, object]:
    """The three ``.pt`` files: in directory ``source``, inside the facenet-pytorch wheel ``source``, or (None) in
    the installed facenet-pytorch package. Returns {net: path}, a description, and a temp dir to clean up (or
    None)."""
    cleanup = None
    if source is None:
        try:
            import facenet_pytorch
        except ImportError:
            raise DetectorError("convert --model mtcnn: facenet-pytorch is not installed; `pip install --no-deps "
                                "facenet-pytorch` (it ships MTCNN's weights), or pass its wheel or a directory "
                                "holding pnet.pt, rnet.pt, onet.pt") from None
        directory = Path(facenet_pytorch.__file__).parent / "data"
        description = f"facenet-pytorch {_version('facenet-pytorch')} ({directory})"
    else:
        source = Path(source)
        if source.suffix == ".whl" and source.is_file():
            cleanup = tempfile.TemporaryDirectory(prefix="mtcnn-")
            directory = Path(cleanup.name)
            with zipfile.ZipFile(source) as wheel:
                for name in NETWORKS:
                    member = f"facenet_pytorch/data/{name}.pt"
                    if member not in wheel.namelist():
                        cleanup.cleanup()
                        raise DetectorError(f"convert --model mtcnn: {source} has no {member}")
                    (directory / f"{name}.pt").write_bytes(wheel.read(member))
        elif source.is_dir():
            directory = source
        else:
            raise DetectorError(f"convert --model mtcnn: {source} is neither a directory of pnet.pt, rnet.pt, "
                                f"onet.pt nor a facenet-pytorch wheel")
        description = str(source)
    files = {name: directory / f"{name}.pt" for name in NETWORKS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        if cleanup is not None:
            cleanup.cleanup()
        raise DetectorError(f"convert --model mtcnn: missing {', '.join(missing)}")
    return files, description, cleanup


def convert_mtcnn(out: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """Converts facenet-pytorch's MTCNN weights (``facenet_weights``) into ``out``/{pnet,rnet,onet}/ and
    ``detector.json``; written to a temp directory and renamed, so a failure leaves nothing. Needs torch."""
    out = Path(out).expanduser()
    files, description, cleanup = facenet_weights(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        wanted = targets()
        for name, path in files.items():
            variables = torch_to_flax(load_torch_state_dict(path), f"mtcnn_{name}", wanted[name])
            save_variables(variables, staging / name, {"name": f"mtcnn_{name}", "source": str(path)})
        (staging / DETECTOR_FILE).write_text(json.dumps(
            {"detector": "mtcnn", "source": description, "min_face": MIN_FACE, "thresholds": list(THRESHOLDS),
             "factor": FACTOR}, indent=2) + "\n")
        os.chmod(staging, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if cleanup is not None:
            cleanup.cleanup()
    return out


def load_detector(directory: str | os.PathLike, **options) -> Detector:
    """The detector ``convert_mtcnn`` wrote to ``directory`` (no torch needed); ``options`` override its
    min_face, thresholds, factor."""
    directory = Path(directory).expanduser()
    if not (directory / DETECTOR_FILE).is_file():
        raise DetectorError(f"{directory} is not a face detector: no {DETECTOR_FILE} (write one with `ppfer-jax "
                            f"convert --model mtcnn --out {directory}`)")
    wanted = targets()
    variables = {}
    for name in NETWORKS:
        try:
            loaded = load_variables(directory / name, wanted[name])
        except (FileNotFoundError, ValueError) as error:
            raise DetectorError(f"detector {directory}: {name}: {error}") from None
        variables[name] = {"params": loaded["params"]}
    return Detector(variables, path=directory, **options)


def default_detector_dir() -> Path:
    return Path(os.environ.get("PPFER_JAX_DETECTOR", DEFAULT_DIR)).expanduser()


def find_detector(directory: str | os.PathLike | None = None, log=print, **options) -> Detector:
    """The detector in ``directory``, else in the default place; when the default place is empty and
    facenet-pytorch and torch are installed, it is converted there first (once, no download)."""
    if directory is not None:
        return load_detector(directory, **options)
    directory = default_detector_dir()
    if not (directory / DETECTOR_FILE).is_file():
        try:
            import facenet_pytorch  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            raise DetectorError(
                f"no face detector at {directory}: install facenet-pytorch (`pip install --no-deps "
                f"facenet-pytorch`, with torch) and run `ppfer-jax convert --model mtcnn --out {directory}` once, "
                f"or pass --detector DIR") from None
        convert_mtcnn(directory)
        log(f"converted facenet-pytorch's MTCNN weights into {directory} (once; later runs need no torch)")
    return load_detector(directory, **options)


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def box_iou(a, b) -> float:
    """IoU of two x0, y0, x1, y1 boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0

