"""`anonymize` on real faces in full frames (scikit-image's photographs): a face moving over a background, two
faces in one frame, face-free frames. The detector (MTCNN converted from facenet-pytorch) finds the hand-labelled
face in every frame; the output has the input's size and rate, is changed on the faces and unchanged elsewhere up
to H.264's loss; frames with a face lost or none are pixelated whole and counted; a failure leaves no file.

The anonymiser is a stand-in bundle (colour inversion, the real bundle's fixed batch shape) so that these tests
need no trained run; ``test_anonymize.py`` runs the trained tiny bundle."""

from fractions import Fraction

import jax
import ml_collections
import numpy as np
import pytest
import video_helpers

pytest.importorskip("facenet_pytorch")  # the weights' source (and skimage's photos below)
skimage_data = pytest.importorskip("skimage.data")

from data_pipelines import video  # noqa: E402
from ppfer_jax import anonymize, face_detection, face_tracks  # noqa: E402

# The astronaut's face, hand-labelled on skimage.data.astronaut() (512x512): cheek to cheek, hairline to chin.
ASTRONAUT_FACE = np.array([177.0, 67.0, 265.0, 175.0])
PATCH = (100, 20, 340, 260)  # the part of the photo pasted into the videos (left, top, right, bottom): head and hair
SCALE = 0.5  # pasted at half size: a 44x54 px face
FPS = 10
HEIGHT, WIDTH = 240, 320


class InvertingBundle:
    """What ``anonymize`` uses of a bundle: size, clip length, config, and ``anonymise`` on fixed-shape clips."""

    image_size, num_frames, has_utility, path = 32, 2, False, "stand-in"
    config = ml_collections.ConfigDict({"data": {"image_size": 32, "num_frames": 2}})

    def __init__(self):
        self.shapes = []
        self._fn = jax.jit(lambda clips: 255 - clips)

    def anonymise(self, clips):
        self.shapes.append(clips.shape)
        return np.asarray(self._fn(clips))


def face_patch(mirror: bool = False):
    left, top, right, bottom = PATCH
    patch = skimage_data.astronaut()[top:bottom, left:right]
    patch = patch[:, ::-1] if mirror else patch
    size = (round((right - left) * SCALE), round((bottom - top) * SCALE))
    box = (ASTRONAUT_FACE - [left, top, left, top]) * SCALE
    if mirror:
        box = np.array([size[0] - box[2], box[1], size[0] - box[0], box[3]])
    return video.resize_box(np.ascontiguousarray(patch), (0, 0, right - left, bottom - top), size), box


def background(height=HEIGHT, width=WIDTH):
    coffee = skimage_data.coffee()  # 400x600, no face
    return video.resize_box(coffee, (0, 0, coffee.shape[1], coffee.shape[0]), (width, height))


def composite(positions, mirror=False, height=HEIGHT, width=WIDTH):
    """A frame of the background with the face patch at each (x, y), and the true face boxes there."""
    frame, boxes = background(height, width).copy(), []
    for x, y in positions:
        patch, box = face_patch(mirror)
        frame[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
        boxes.append(box + [x, y, x, y])
    return frame, boxes


def write_mp4(path, frames, fps=FPS):
    return video_helpers.write_mp4(path, frames, fps, crf=12)


read_mp4 = video_helpers.read_mp4


MOVING = [(10 + 25 * k, 40 + 8 * k) for k in range(8)]  # the face crosses the frame, away from its edges
GONE = 6  # then face-free frames (the background alone): the face is lost in mid-frame


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return face_detection.load_detector(face_detection.convert_mtcnn(tmp_path_factory.mktemp("detector") / "mtcnn"))


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    """The moving-face video, then GONE face-free frames; its file, decoded frames and true boxes per frame."""
    frames, truth = zip(*(composite([p]) for p in MOVING))
    frames = list(frames) + [background()] * GONE
    path = write_mp4(tmp_path_factory.mktemp("videos") / "moving.mp4", frames)
    return path, read_mp4(path)[0], [b[0] for b in truth] + [None] * GONE


def iou(a, b):
    return face_tracks.iou_matrix(np.asarray(a)[None], np.asarray(b)[None])[0, 0]


def test_the_tracked_box_overlaps_the_true_face_in_every_frame(detector, moving):
    _, frames, truth = moving
    boxes, shape = anonymize.detect_faces(detector, frames)
    assert shape == (HEIGHT, WIDTH) and len(boxes) == len(frames)
    plans = face_tracks.plan(face_tracks.link(boxes), len(frames), HEIGHT, WIDTH, carry=2)
    overlaps = [iou(plan.faces[0][1], box) for plan, box in zip(plans, truth) if box is not None]
    print("IoU with the true face per frame:", np.round(overlaps, 2))
    assert len(overlaps) == len(MOVING) and min(overlaps) >= 0.5
    assert all(len(p.faces) == 1 and p.faces[0][0] == 0 for p in plans[: len(MOVING)])  # one face, one track
    assert [len(b) for b in boxes[len(MOVING):]] == [0] * GONE  # nothing found on the background
    # the lost face: its last box carried 2 frames, then the whole frame falls back
    assert [p.carried for p in plans[len(MOVING):]] == [1, 1, 0, 0, 0, 0]
    assert [p.fallback for p in plans[len(MOVING):]] == [None, None] + ["lost"] * (GONE - 2)


def test_the_output_keeps_size_and_rate_changes_the_face_and_nothing_else(detector, moving, tmp_path):
    path, inputs, truth = moving
    bundle = InvertingBundle()
    result = anonymize.anonymize_video(bundle, path, tmp_path / "out.mp4", detector=detector, carry=2,
                                       progress=False)
    frames, rate = read_mp4(tmp_path / "out.mp4")
    assert frames.shape == inputs.shape and rate == FPS
    assert (result.width, result.height, result.frames, result.faces) == (WIDTH, HEIGHT, len(inputs), 1)
    assert result.fallback_frames == tuple(range(len(MOVING) + 2, len(inputs)))  # reported per video
    assert set(bundle.shapes) == {(anonymize.BATCH_CLIPS, 2, 32, 32, 3)}  # the bundle's one compiled shape
    diff = np.abs(frames.astype(int) - inputs.astype(int)).mean(-1)
    for t, box in enumerate(truth[: len(MOVING)]):
        x0, y0, x1, y1 = np.rint(box).astype(int)
        assert diff[t, y0:y1, x0:x1].mean() > 40, f"frame {t}: the face is not replaced"
        left, top, side = video.face_square(box, video.FACE_MARGIN * 1.5)  # beyond the crop, with slack
        outside = np.ones(diff.shape[1:], bool)
        outside[max(top, 0) : top + side, max(left, 0) : left + side] = False
        assert diff[t][outside].mean() < 2.5 and np.percentile(diff[t][outside], 99) < 12, f"frame {t}"
    pixelated = anonymize.pixelated(inputs[-1])
    assert np.abs(frames[-1].astype(int) - pixelated.astype(int)).mean() < 3  # the fallback frames
    assert np.abs(frames[-1].astype(int) - inputs[-1].astype(int)).mean() > 5


def test_two_faces_in_one_frame_are_both_found_and_replaced(detector, tmp_path):
    frame, truth = composite([(30, 60)], width=520)
    patch, box = face_patch(mirror=True)
    frame[50 : 50 + patch.shape[0], 340 : 340 + patch.shape[1]] = patch
    truth.append(box + [340, 50, 340, 50])
    found = detector.detect(frame)
    assert len(found) == 2
    for box in truth:
        assert max(iou(box, b) for b in found.boxes) >= 0.5
    path = write_mp4(tmp_path / "two.mp4", [frame] * 3)
    result = anonymize.anonymize_video(InvertingBundle(), path, tmp_path / "two_out.mp4", detector=detector,
                                       progress=False)
    out, _ = read_mp4(tmp_path / "two_out.mp4")
    assert result.faces == 2 and result.fallback_frames == ()
    diff = np.abs(out.astype(int) - read_mp4(path)[0].astype(int)).mean(-1)
    for box in truth:
        x0, y0, x1, y1 = np.rint(box).astype(int)
        assert diff[:, y0:y1, x0:x1].mean() > 40


def test_face_free_frames_take_the_fallback_and_it_is_reported(detector, tmp_path, capsys):
    path = write_mp4(tmp_path / "coffee.mp4", [background()] * 4)
    warnings = []
    result = anonymize.anonymize_video(InvertingBundle(), path, tmp_path / "coffee_out.mp4", detector=detector,
                                       progress=False, warn=warnings.append)
    assert result.faces == 0 and result.fallback_frames == (0, 1, 2, 3)
    assert "4 of 4 frames pixelated whole" in warnings[0] and "frames 0-3" in warnings[0]
    assert "4 frames pixelated whole (fallback)" in anonymize.format_result(result)
    kept = anonymize.anonymize_video(InvertingBundle(), path, tmp_path / "kept.mp4", detector=detector,
                                     progress=False, no_face="keep")
    assert kept.fallback_frames == ()
    out, _ = read_mp4(tmp_path / "kept.mp4")
    assert np.abs(out.astype(int) - read_mp4(path)[0].astype(int)).mean() < 2.5  # unchanged


def test_a_failure_leaves_no_partial_file(detector, moving, tmp_path, monkeypatch):
    def fail(self, frames):
        raise OSError("disk full")

    monkeypatch.setattr(anonymize.Mp4Writer, "write", fail)
    out = tmp_path / "out"
    results, failures = anonymize.anonymize_all(InvertingBundle(), [moving[0]], out, detector=detector,
                                                progress=False)
    assert results == [] and "disk full" in failures[moving[0]]
    assert list(out.iterdir()) == []


def test_feather_covers_the_face_fully_and_fades_to_the_edge():
    weight = anonymize.feather(40, 28)
    assert np.all(weight[6:34, 6:34] == 1.0)
    assert weight[0, 20] < 0.1 and weight[0, 0] < 0.1 and np.all(np.diff(weight[:6, 20]) > 0)


def test_crop_square_pads_at_the_border_and_paste_drops_the_outside():
    frame = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    crop = video.crop_square(frame, (-5, -5, 10), 10)  # half outside, top-left
    assert crop.shape == (10, 10, 3) and np.all(crop[:5, :5] == frame[0, 0])
    target = np.zeros((20, 30, 3), np.uint8)
    anonymize.paste(target, np.full((4, 4, 3), 200, np.uint8), (24, 14, 10), 10)
    assert np.all(target[14:, 24:] == 200) and np.all(target[:14] == 0) and np.all(target[:, :24] == 0)


def test_pixelated_hides_detail():
    frame = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    out = anonymize.pixelated(frame, blocks=4)
    assert out.shape == frame.shape and len(np.unique(out.reshape(-1, 3), axis=0)) == 4 * 6


def test_fps_of_a_directory_of_frames_is_kept(detector, tmp_path):
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    for k, p in enumerate(MOVING[:3]):
        Image.fromarray(composite([p])[0]).save(frames / f"{k}.png")
    result = anonymize.anonymize_video(InvertingBundle(), frames, tmp_path / "f.mp4", detector=detector,
                                       fps=Fraction(30000, 1001), progress=False)
    assert read_mp4(tmp_path / "f.mp4")[1] == Fraction(30000, 1001) and result.faces == 1
