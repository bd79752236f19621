"""`ppfer-jax anonymize` on real encoded videos: every frame out at the input's rate, anonymised (the frozen
validator loses the identities), a clear error per bad input, and never a partial file."""

import json
from fractions import Fraction

import numpy as np
import pytest
import video_helpers
from PIL import Image

from data_pipelines import synthetic
from ppfer_jax import anonymize, export
from ppfer_jax.bundle import load_bundle
from ppfer_jax.cli import main
from ppfer_jax.nets import to_float
from ppfer_jax.recipes import run
from ppfer_jax.parallel import make_mesh

FRAMES, FPS, WIDTH, HEIGHT = 11, 12, 48, 40


def write_mp4(path, frames, fps=FPS):
    return video_helpers.write_mp4(path, frames, fps)


read_mp4 = video_helpers.read_mp4


def luma(frames):
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def face_clips(identities, clips_per_identity):
    """Non-square 48x40 videos of moving synthetic test faces (rendered at 40 px, sides padded), with labels."""
    spec = synthetic.SyntheticSpec(num_identities=6, num_wild_identities=6, clips_per_identity_train=12,
                                   clips_per_identity_test=6, clips_per_identity_wild=12,
                                   clips_per_identity_val=6, num_frames=FRAMES, image_size=HEIGHT)
    source = synthetic.SyntheticFaces(spec, "test")
    pad = (WIDTH - HEIGHT) // 2
    for identity in identities:
        for k in range(clips_per_identity):
            clip = source[identity * spec.clips_per_identity_test + k]["video"]
            yield np.pad(clip, ((0, 0), (0, 0), (pad, pad), (0, 0)), mode="edge"), identity


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Two clips of each of the six tiny-run people as mp4 files, and their identities."""
    directory = tmp_path_factory.mktemp("faces")
    paths, identities = [], []
    for n, (clip, identity) in enumerate(face_clips(range(6), 2)):
        paths.append(write_mp4(directory / f"person{identity}_{n % 2}.mp4", clip))
        identities.append(identity)
    return paths, identities


@pytest.fixture(scope="module")
def anonymised(bundle, faces, tmp_path_factory):
    """All the face videos through the CLI into one output directory, with predictions."""
    out = tmp_path_factory.mktemp("anonymised")
    code = main(["anonymize", "--centre-square", *map(str, faces[0]), "--bundle", str(bundle.path), "-o", str(out), "--predictions"])
    return code, out


def test_every_frame_comes_out_anonymised_at_the_input_rate(bundle, faces, anonymised):
    code, out = anonymised
    assert code == 0
    source = faces[0][0]
    frames, rate = read_mp4(out / f"{source.stem}.mp4")
    assert frames.shape == (FRAMES, 32, 32, 3) and rate == FPS
    inputs, _ = read_mp4(source)
    resized = np.stack([anonymize.to_bundle_size(f, 32) for f in inputs])
    # not the input frames: the chain moves them by far more than H.264's loss (bounded at 4 levels below)
    assert np.mean(np.abs(frames.astype(int) - resized.astype(int))) > 10
    # They are the bundle's chain of each input frame, up to H.264's loss; 4:2:0 keeps brightness at full
    # resolution (colour: see the --full-colour test).
    expected = bundle.anonymise(resized[None])[0]
    assert np.mean(np.abs(luma(frames) - luma(expected))) < 4


def test_only_the_finished_files_are_left(faces, anonymised):
    _, out = anonymised
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}{s}" for p in faces[0] for s in (".mp4", ".json"))


def test_predictions_cover_every_frame_in_clips_of_the_trained_length(faces, anonymised):
    _, out = anonymised
    record = json.loads((out / f"{faces[0][0].stem}.json").read_text())
    assert record["frames"] == FRAMES and record["clip_frames"] == 4 and record["fps"] == FPS
    clips = record["clips"]
    assert [c["first_frame"] for c in clips] == [0, 4, 8]
    assert [c["frames"] for c in clips] == [4, 4, 3] and clips[-1]["padded_frames"] == 1
    assert record["classes"] == list(synthetic.EXPRESSIONS)
    for clip in clips:
        assert sum(clip["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert clip["expression"] in record["classes"]


def test_the_frozen_validator_reads_fewer_identities_from_the_output(tiny_run, faces, anonymised):
    """V_pl, loaded from the run (a bundle has none), on every frame of the input and of the output videos."""
    _, out = anonymised
    ctx = run.context(export.load_run_config(tiny_run), tiny_run, make_mesh())
    v_pl = ctx.network("v_pl")

    def accuracy(frames, identity):
        logits = ctx.nets.apply("v_pl", v_pl, to_float(frames))
        return float(np.mean(np.argmax(logits, -1) == identity))

    before, after = [], []
    for path, identity in zip(*faces, strict=True):
        before.append(accuracy(np.stack([anonymize.to_bundle_size(f, 32) for f in read_mp4(path)[0]]), identity))
        after.append(accuracy(read_mp4(out / f"{path.stem}.mp4")[0], identity))
    before, after = np.mean(before), np.mean(after)
    print(f"V_pl identity accuracy: input frames {before:.1%}, anonymised frames {after:.1%} (chance 16.7%)")
    assert before >= 0.6, "V_pl should recognise the people in the input videos"
    assert after <= before - 0.3


def test_a_directory_of_png_frames_in_full_colour(bundle, tmp_path):
    clip, _ = next(face_clips([1], 1))
    frames = tmp_path / "frames"
    frames.mkdir()
    for k, frame in enumerate(clip[:5]):
        Image.fromarray(frame[:, 4:-4]).save(frames / f"frame{k}.png")  # 40x40
    (frames / "notes.txt").write_text("not a frame")
    out = tmp_path / "out.mp4"
    assert main(["anonymize", "--centre-square", str(frames), "--bundle", str(bundle.path), "-o", str(out), "--fps", "30000/1001",
                 "--full-colour"]) == 0
    video, rate = read_mp4(out)
    assert video.shape == (5, 32, 32, 3) and rate == Fraction(30000, 1001)
    expected = bundle.anonymise(np.stack([anonymize.to_bundle_size(f[:, 4:-4], 32) for f in clip[:5]])[None])[0]
    # H.264 4:4:4 at its default quality on the anonymiser's fine colour pattern (measured 5.9 grey levels)
    assert np.mean(np.abs(video.astype(int) - expected.astype(int))) < 8


def test_keep_size_writes_the_inputs_centred_square(bundle, faces, tmp_path):
    out = tmp_path / "out.mp4"
    assert main(["anonymize", "--centre-square", str(faces[0][0]), "--bundle", str(bundle.path), "-o", str(out), "--keep-size"]) == 0
    video, rate = read_mp4(out)
    assert video.shape == (FRAMES, HEIGHT, HEIGHT, 3) and rate == FPS


@pytest.mark.parametrize("kind, reason", [
    ("corrupt", "unreadable video"), ("empty", "empty file"), ("text", "unknown extension '.txt'"),
    ("no_images", "no frame images"), ("missing", "no such file"),
])
def test_a_bad_input_gets_one_clear_error_naming_it_and_leaves_no_output(bundle, tmp_path, kind, reason, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = {"corrupt": inputs / "clip.mp4", "empty": inputs / "clip.avi", "text": inputs / "clip.txt",
            "no_images": inputs / "frames", "missing": inputs / "gone.mov"}[kind]
    if kind == "corrupt":
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello")
    elif kind == "no_images":
        path.mkdir()
    out = tmp_path / "out"
    assert main(["anonymize", "--centre-square", str(path), "--bundle", str(bundle.path), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: {reason}" in err
    assert not out.exists() or list(out.iterdir()) == []


def test_with_several_inputs_a_failure_is_reported_and_the_others_are_done(bundle, faces, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    good = faces[0][0].read_bytes()
    bad.write_bytes(good[: len(good) // 3])  # cut short
    out = tmp_path / "out"
    assert main(["anonymize", "--centre-square", str(bad), str(faces[0][0]), "--bundle", str(bundle.path), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert str(bad) in captured.err and "1 of 2 inputs failed" in captured.err
    assert f"-> {out / faces[0][0].name}: {FRAMES} frames at {FPS} fps" in captured.out
    assert [p.name for p in out.iterdir()] == [faces[0][0].name]


def test_a_failure_while_writing_leaves_no_partial_file(bundle, faces, tmp_path, monkeypatch):
    written = []
    original = anonymize.Mp4Writer.write

    def fail_after_first_batch(self, frames):
        if written:
            raise OSError("disk full")
        written.append(len(frames))
        original(self, frames)

    monkeypatch.setattr(anonymize.Mp4Writer, "write", fail_after_first_batch)
    out = tmp_path / "out"
    results, failures = anonymize.anonymize_all(bundle, [faces[0][0]], out, predictions=True, batch_clips=1,
                                                progress=False)
    assert written == [4] and results == [] and "disk full" in failures[faces[0][0]]
    assert list(out.iterdir()) == []


def test_batches_pad_the_last_clip_with_the_last_frame():
    frames = [np.full((2, 2, 3), k, np.uint8) for k in range(11)]
    got = list(anonymize.batches(frames, clip_frames=4, clips=2))
    assert [count for _, count in got] == [8, 3]
    assert all(batch.shape == (2, 4, 2, 2, 3) for batch, _ in got)
    assert got[1][0][:, :, 0, 0, 0].tolist() == [[8, 9, 10, 10], [10, 10, 10, 10]]


def test_output_paths(tmp_path):
    a, b = tmp_path / "a.mp4", tmp_path / "sub" / "a.avi"
    assert anonymize.output_paths([a], tmp_path / "x.mp4") == [tmp_path / "x.mp4"]
    assert anonymize.output_paths([a], tmp_path / "out") == [tmp_path / "out" / "a.mp4"]
    with pytest.raises(ValueError, match="need an output directory"):
        anonymize.output_paths([a, tmp_path / "b.mp4"], tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="would both be written"):
        anonymize.output_paths([a, b], tmp_path / "out")
    with pytest.raises(ValueError, match="would replace its input"):
        anonymize.output_paths([a], tmp_path)


def test_resize_note_says_what_happens_to_the_frame():
    assert anonymize.resize_note(32, 32, 32) is None
    assert "not square" in anonymize.resize_note(40, 48, 32) and "40x40" in anonymize.resize_note(40, 48, 32)
    assert anonymize.resize_note(64, 64, 32) == "64x64 px resized to the bundle's 32x32 px"
