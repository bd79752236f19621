"""Real-data readers on tiny fake CREMA-D and DFEW trees of real encoded videos and JPEG frames.

The trees use the real naming schemes and layouts. Every frame of a fake video is one grey level that
encodes the frame's index, so the 16-frame sampling rule (here 4) can be read back from the built clips.
"""

import collections
import contextlib
import dataclasses
import io
import itertools
import os
import pickle
import shlex
from pathlib import Path

import av
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_pipelines import cremad, dfew, synthetic, video
from data_pipelines.loader import PreparedSplit, RandomResizedCrop, make_iterator
from ppfer_jax.cli import main

ACTORS = (1001, 1002, 1003)
SENTENCES = {"DFA": "XX", "IEO": "HI"}  # sentence -> intensity level used in the fake tree
SIZE, FRAMES = 32, 4  # built clips: 4 frames of 32x32
SHORT = "1003_IEO_SAD_HI"  # a 3-frame video: its clip repeats the last frame
BAD_CREMAD = {"1001_ITS_ANG_XX.flv": "unreadable video", "1002_ITS_ANG_XX.flv": "truncated",
              "1003_ITS_XYZ_XX.flv": "unknown emotion code 'XYZ'"}


def grey(index: int) -> int:
    return 20 + 20 * index


def write_video(path, num_frames, height=48, width=64, side_colour=None, codec="flv", container=None):
    """Frame i is grey(i); with ``side_colour``, the columns outside the centred square are painted with it."""
    with av.open(str(path), "w", format=container) as output:
        stream = output.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            frame = np.full((height, width, 3), grey(i), np.uint8)
            if side_colour is not None:
                margin = (width - height) // 2
                frame[:, :margin] = frame[:, width - margin:] = side_colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)


def clip_greys(clip):
    return clip.reshape(len(clip), -1).mean(axis=1)


@pytest.fixture(scope="module")
def cremad_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("crema") / "manual"
    videos = root / "VideoFlash"
    videos.mkdir(parents=True)
    for actor, (sentence, level), emotion in itertools.product(ACTORS, SENTENCES.items(), cremad.EMOTION_CODES):
        name = f"{actor}_{sentence}_{emotion}_{level}"
        write_video(videos / f"{name}.flv", 3 if name == SHORT else 8, side_colour=(0, 0, 255))
    (videos / "1001_ITS_ANG_XX.flv").write_bytes(b"not a video" * 40)
    write_video(videos / "1002_ITS_ANG_XX.flv", 12)
    whole = (videos / "1002_ITS_ANG_XX.flv").read_bytes()
    (videos / "1002_ITS_ANG_XX.flv").write_bytes(whole[: len(whole) * 2 // 5])
    write_video(videos / "1003_ITS_XYZ_XX.flv", 8)
    (root / "README.txt").write_text("not a clip")
    return root


def prepare_cremad(manual_dir, data_dir, **kwargs):
    options = dict(image_size=SIZE, num_frames=FRAMES, test_clips=12, max_bad_fraction=0.1, progress=False)
    return cremad.prepare(manual_dir, data_dir, **{**options, **kwargs})


CREMAD_FIELDS = ("video", "identity", "expression", "actor", "sentence", "level", "name")


def read_splits(data_dir, name, fields):
    """split -> clip name -> example, of a prepared data set."""
    sources = {split: PreparedSplit.open(data_dir, name, split, fields=fields) for split in ("train", "test")}
    return {split: {example["name"].decode(): example for example in (source[i] for i in range(len(source)))}
            for split, source in sources.items()}


@pytest.fixture(scope="module")
def cremad_built(cremad_tree, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("crema_data")
    summary = prepare_cremad(cremad_tree, data_dir)
    return summary, read_splits(data_dir, f"cremad/{summary['config']}", CREMAD_FIELDS), data_dir


def test_cremad_clips_have_the_configured_shape_and_the_labels_of_their_names(cremad_built):
    _, splits, _ = cremad_built
    for name, example in {**splits["train"], **splits["test"]}.items():
        actor, sentence, emotion, level = name.split("_")
        assert example["video"].shape == (FRAMES, SIZE, SIZE, 3) and example["video"].dtype == np.uint8
        assert example["identity"] == int(actor) - 1001 and example["actor"] == int(actor)
        assert example["expression"] == cremad.EMOTION_CODES.index(emotion)
        assert example["sentence"].decode() == sentence and example["level"].decode() == level


def test_cremad_frames_follow_the_papers_sampling_and_the_face_box_is_cropped(cremad_built):
    _, splits, _ = cremad_built
    clips = {name: example["video"] for name, example in {**splits["train"], **splits["test"]}.items()}
    # 8 frames -> stride 8 // 4 = 2: frames 0, 2, 4, 6; 3 frames -> 0, 1, 2, 2 (last repeated)
    np.testing.assert_allclose(clip_greys(clips["1001_DFA_ANG_XX"]), [grey(i) for i in (0, 2, 4, 6)], atol=8)
    np.testing.assert_allclose(clip_greys(clips[SHORT]), [grey(i) for i in (0, 1, 2, 2)], atol=8)
    # blue bands fill a quarter of the 64-wide source frames; the centred 48x48 box leaves them out
    blue_excess = [clip[..., 2].astype(float).mean() - clip[..., 0].mean() for clip in clips.values()]
    assert max(blue_excess) < 10


def test_cremad_split_is_the_requested_size_disjoint_stratified_and_written_out(cremad_built):
    summary, splits, _ = cremad_built
    train, test = list(splits["train"]), list(splits["test"])
    assert (len(train), len(test)) == (24, 12) == (summary["splits"]["train"], summary["splits"]["test"])
    assert not set(train) & set(test) and len(set(train) | set(test)) == 36
    for split in (train, test):
        assert {name[:4] for name in split} == {str(a) for a in ACTORS}  # every actor in both splits
    assert collections.Counter(name[:4] for name in test) == {str(a): 4 for a in ACTORS}
    listed = open(summary["files"]["test clip names"]).read().split()
    assert listed == sorted(test)


def test_cremad_bad_files_are_skipped_and_listed_with_the_reason(cremad_built, cremad_tree):
    summary, _, _ = cremad_built
    skipped = {path.rsplit("/", 1)[-1]: reason for path, reason in summary["skipped"].items()}
    assert skipped.keys() == BAD_CREMAD.keys()
    for name, reason in BAD_CREMAD.items():
        assert reason in skipped[name], (name, skipped[name])
    assert summary["listed"] == 39
    text = video.format_summary(summary)
    assert "skipped 3 of 39" in text and "1002_ITS_ANG_XX.flv: truncated" in text


def test_cremad_stops_when_too_many_files_are_bad_and_leaves_no_data_set(cremad_tree, tmp_path):
    with pytest.raises(ValueError, match=r"3 of 39 files .* more than max_bad_fraction=0.05.*1001_ITS_ANG_XX.flv"):
        prepare_cremad(cremad_tree, tmp_path, max_bad_fraction=0.05)
    assert not list(tmp_path.rglob("dataset_info.json"))
    listing = next(tmp_path.rglob("skipped.txt")).read_text()
    assert all(name in listing for name in BAD_CREMAD)


def test_cremad_layout_errors_name_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing is not a directory"):
        cremad.find_videos(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty is empty"):
        cremad.find_videos(tmp_path / "empty")
    (tmp_path / "wrong" / "AudioWAV").mkdir(parents=True)
    with pytest.raises(ValueError, match="no CREMA-D videos; expected .*VideoFlash/\\*.flv.*found: AudioWAV"):
        cremad.find_videos(tmp_path / "wrong")


def test_cremad_name_parsing_names_the_wrong_part():
    clip = cremad.parse_name("x/1091_TSI_NEU_LO.flv")
    assert (clip.identity, clip.sentence, clip.expression, clip.level) == (90, "TSI", 4, "LO")
    for name, message in [("1001_DFA_ANG.flv", "not ActorID_Sentence_Emotion_Level"),
                          ("1092_DFA_ANG_XX.flv", "actor 1092 outside"),
                          ("1001_DFA_JOY_XX.flv", "unknown emotion code 'JOY'"),
                          ("1001_DFA_ANG_ZZ.flv", "unknown intensity level 'ZZ'")]:
        with pytest.raises(video.BadInput, match=message):
            cremad.parse_name(name)


def test_closed_set_split_at_cremad_size_has_2232_test_clips_and_every_actor_in_both():
    rng = np.random.default_rng(0)
    counts = rng.integers(78, 86, size=91)
    counts[-1] += 7442 - counts.sum()
    clips = [cremad.ClipName(f"{1001 + a}_{k:03d}", 1001 + a, "DFA", k % 6, "XX")
             for a, count in enumerate(counts) for k in range(count)]
    test = cremad.closed_set_split(clips, cremad.PAPER_TEST_CLIPS, seed=0)
    assert len(test) == 2232
    per_actor = collections.Counter(stem[:4] for stem in test)
    for a, count in enumerate(counts):
        assert abs(per_actor[str(1001 + a)] - count * 2232 / 7442) < 1  # proportional, so in both splits
    assert cremad.closed_set_split(clips[::-1], 2232, seed=0) == test  # order does not matter
    assert cremad.closed_set_split(clips, 2232, seed=1) != test
    with pytest.raises(ValueError, match="every actor must be in both splits"):
        cremad.closed_set_split(clips, 50, seed=0)


def test_cremad_prepare_resumes_from_cached_clips_and_then_removes_the_cache(cremad_tree, tmp_path):
    spec = cremad.config_for(SIZE, num_frames=FRAMES, test_clips=12).clip
    cache = video.clip_cache_dir(tmp_path / "downloads", "cremad", spec)
    cache.mkdir(parents=True)
    np.save(cache / "1002_DFA_HAP_XX.npy", np.full(spec.shape, 7, np.uint8))  # as an interrupted run left it
    summary = prepare_cremad(cremad_tree, tmp_path)
    splits = read_splits(tmp_path, f"cremad/{summary['config']}", ("video", "name"))
    reused = {**splits["train"], **splits["test"]}["1002_DFA_HAP_XX"]["video"]
    assert (reused == 7).all()
    assert not cache.exists()


def test_prepare_command_builds_reports_and_resumes_and_bad_input_is_one_line(cremad_tree, tmp_path, capsys):
    args = ["prepare", "cremad", "--manual_dir", str(cremad_tree), "--data_dir", str(tmp_path), "--image_size",
            str(SIZE), "--num_frames", str(FRAMES), "--test_clips", "12", "--max_bad_fraction", "0.1",
            "--workers", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "prepared at" in out and "train: 24 clips" in out and "3 actors, 4-4 clips each" in out
    assert "skipped 3 of 39 listed files" in out
    assert main(args) == 0
    assert "already prepared" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["prepare", "cremad", "--manual_dir", str(tmp_path / "empty"), "--data_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ppfer-jax prepare: error: manual_dir" in err and "empty is empty" in err


# ----------------------------------------------------------------------------------------------------------------
# DFEW

DFEW_TRAIN = {str(k): (k - 1) % 7 + 1 for k in range(1, 15)}  # clips 1..14, labels 1..7 twice
DFEW_TEST = {str(k): k - 14 for k in range(15, 22)}  # clips 15..21, labels 1..7
AS_VIDEO = ("00003", "00017")  # stored as .mp4 instead of a frame directory
CORRUPT_FRAME = "00005"  # frame 2 of this clip is not a JPEG
MISSING = "22"  # listed in the train file, absent from Clip/


def write_labels(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("video_name,label\n" + "".join(f"{name},{label}\n" for name, label in labels.items()))


@pytest.fixture(scope="module")
def dfew_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("dfew") / "manual"
    clips = root / "Clip" / "clip_224x224"
    for name in itertools.chain(DFEW_TRAIN, DFEW_TEST):
        name = name.zfill(5)
        if name in AS_VIDEO:
            clips.mkdir(parents=True, exist_ok=True)
            write_video(clips / f"{name}.mp4", 6, height=40, width=40, codec="mpeg4")
            continue
        (clips / name).mkdir(parents=True)
        for i in range(6):  # unpadded numbers: frame 10 must not sort before frame 2
            Image.fromarray(np.full((40, 40, 3), grey(i), np.uint8)).save(clips / name / f"{name}_{i + 1}.jpg")
    (clips / CORRUPT_FRAME / f"{CORRUPT_FRAME}_3.jpg").write_bytes(b"not a jpeg")
    labels = root / dfew.LABEL_DIR
    write_labels(labels / "train(single-labeled)" / "set_1.csv", {**DFEW_TRAIN, MISSING: 1})
    write_labels(labels / "test(single-labeled)" / "set_1.csv", DFEW_TEST)
    return root


def prepare_dfew(manual_dir, data_dir, **kwargs):
    options = dict(fold=1, image_size=24, num_frames=FRAMES, max_bad_fraction=0.1, progress=False)
    return dfew.prepare(manual_dir, data_dir, **{**options, **kwargs})


def test_dfew_fold_splits_labels_and_clips_from_frame_directories_and_videos(dfew_tree, tmp_path):
    summary = prepare_dfew(dfew_tree, tmp_path)
    splits = read_splits(tmp_path, f"dfew/{summary['config']}", ("video", "expression", "name"))
    train, test = splits["train"], splits["test"]
    good_train = {k.zfill(5): v for k, v in DFEW_TRAIN.items() if k.zfill(5) != CORRUPT_FRAME}
    assert {name: int(e["expression"]) + 1 for name, e in train.items()} == good_train
    assert {name: int(e["expression"]) + 1 for name, e in test.items()} == {k.zfill(5): v for k, v in
                                                                          DFEW_TEST.items()}
    assert summary["splits"] == {"train": 13, "test": 7} and summary["per_class"]["test"]["fear"] == 1
    for name, example in {**train, **test}.items():
        assert example["video"].shape == (FRAMES, 24, 24, 3), name
        # 6 frames -> stride 1: frames 0..3, in frame order whatever the padding of the file names
        np.testing.assert_allclose(clip_greys(example["video"]), [grey(i) for i in range(4)], atol=8)
    skipped = summary["skipped"]
    assert len(skipped) == 2
    assert any(path.endswith(f"{CORRUPT_FRAME}_3.jpg") and "unreadable image" in r for path, r in skipped.items())
    assert any(path.endswith("00022") and "neither a frame directory nor a video" in r for path, r in skipped.items())


def test_dfew_one_random_frame_per_clip(dfew_tree, tmp_path):
    summary = prepare_dfew(dfew_tree, tmp_path, one_random_frame=True)
    assert summary["config"] == "fold1-24-frame"
    splits = read_splits(tmp_path, f"dfew/{summary['config']}", ("video", "name"))
    clips = {**splits["train"], **splits["test"]}
    chosen = []
    for example in clips.values():
        assert example["video"].shape == (1, 24, 24, 3)
        level = clip_greys(example["video"])[0]
        chosen.append(min(range(6), key=lambda i: abs(grey(i) - level)))
        assert abs(grey(chosen[-1]) - level) < 8  # one of the clip's own frames
    assert len(set(chosen)) > 2  # drawn from the whole clip, not always the same frame


def test_dfew_bad_label_files_name_the_file_and_line(dfew_tree, tmp_path):
    manual = tmp_path / "manual"
    (manual / "Clip" / "clip_224x224").mkdir(parents=True)
    write_labels(manual / dfew.LABEL_DIR / "train(single-labeled)" / "set_2.csv", {"1": 3, "2": 9})
    write_labels(manual / dfew.LABEL_DIR / "test(single-labeled)" / "set_2.csv", {"3": 1})
    with pytest.raises(ValueError, match=r"set_2.csv, line 3: label '9' of clip 00002 is not one of 1..7"):
        prepare_dfew(manual, tmp_path / "data", fold=2)
    with pytest.raises(FileNotFoundError, match=r"train\(single-labeled\)/set_3.csv not found"):
        dfew.fold_labels(manual, 3)
    with pytest.raises(ValueError, match="Clip: no EmoLabel_DataSplit/ folder .* found: clip_224x224"):
        dfew.fold_labels(dfew_tree / "Clip", 1)


# ----------------------------------------------------------------------------------------------------------------
# Loading prepared data


class NoiseClips:
    def __init__(self, size=6, shape=(3, 24, 24, 3)):
        self.videos = np.random.default_rng(0).integers(0, 256, (size, *shape), dtype=np.uint8)

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, index):
        return {"video": self.videos[index], "index": np.int32(index)}


def test_random_resized_crop_boxes_follow_torchvision_ranges():
    crop, rng = RandomResizedCrop(), np.random.default_rng(0)
    for height, width in [(112, 112), (48, 64)]:
        for _ in range(300):
            top, left, h, w = crop.box(rng, height, width)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
            assert 0.8 - 0.04 <= h * w / (height * width) <= 1.0
            assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    top, left, h, w = crop.box(rng, 10, 100)  # no draw fits: the centred fallback of the widest allowed aspect
    assert (top, h, w) == (0, 10, 13) and left == 43


def test_random_resized_crop_takes_one_box_for_all_frames_and_resizes_it_back():
    ramp = np.broadcast_to(np.linspace(0, 255, 100).astype(np.uint8)[None, :, None], (100, 100, 3))
    clip = np.stack([ramp, ramp, ramp])
    crop = RandomResizedCrop()
    out = crop.random_map({"video": clip, "label": 3}, np.random.default_rng(5))
    assert out["label"] == 3 and out["video"].shape == clip.shape and out["video"].dtype == np.uint8
    assert (out["video"] == out["video"][0]).all()  # the same box in every frame
    _, left, _, w = crop.box(np.random.default_rng(5), 100, 100)
    row = out["video"][0, 50, :, 0].astype(float) * 99 / 255  # back to source x coordinates
    assert w < 100 and abs(row[0] - (left + 0.5 * w / 100 - 0.5)) < 1.5 and abs(row[-1] - (left + w - 1)) < 1.5
    again = crop.random_map({"video": clip}, np.random.default_rng(5))["video"]
    assert (again == out["video"]).all()


def test_augmented_iterator_redraws_each_epoch_and_repeats_with_the_seed():
    def epochs(seed):
        iterator = make_iterator(NoiseClips(), batch_size=6, seed=seed, shuffle=False, shard_index=0, shard_count=1,
                                 transform=RandomResizedCrop())
        return next(iterator)["video"], next(iterator)["video"]

    first, second = epochs(0)
    assert (first != second).any(axis=(1, 2, 3, 4)).all()  # every clip is cropped anew in epoch 2
    assert all((a == b).all() for a, b in zip(epochs(0), (first, second)))
    assert (epochs(1)[0] != first).any()


@pytest.mark.slow  # worker processes
def test_prepared_split_feeds_the_grain_loader_in_worker_processes(cremad_built, tmp_path):
    summary, _, data_dir = cremad_built
    source = PreparedSplit.open(data_dir, f"cremad/{summary['config']}", "train")
    assert set(source[0]) == {"video", "identity", "expression", "actor"}  # text fields only when asked for
    assert source[0]["identity"].dtype == np.int32
    assert len(pickle.dumps(source)) < 1000  # workers get the path, not the data
    batches = [next(make_iterator(source, batch_size=8, seed=0, shard_index=0, shard_count=1, worker_count=workers,
                                  transform=RandomResizedCrop())) for workers in (0, 1)]
    assert batches[0]["video"].shape == (8, FRAMES, SIZE, SIZE, 3)
    for key in batches[0]:
        np.testing.assert_array_equal(batches[0][key], batches[1][key])
    iterator = make_iterator(source, batch_size=8, seed=0, shard_index=0, shard_count=1, transform=RandomResizedCrop())
    next(iterator), next(iterator), next(iterator)  # past the end of the 24-clip epoch
    state, expected = iterator.get_state(), next(iterator)
    resumed = make_iterator(source, batch_size=8, seed=0, shard_index=0, shard_count=1, transform=RandomResizedCrop())
    resumed.set_state(state)  # as a checkpoint restore does
    np.testing.assert_array_equal(next(resumed)["video"], expected["video"])
    with pytest.raises(FileNotFoundError, match="run `ppfer-jax prepare cremad"):
        PreparedSplit.open(tmp_path, "cremad/112", "train")


# ----------------------------------------------------------------------------------------------------------------
# The method on prepared data: `run` reads CREMA-D (train / held-out val / test) and DFEW frames as its wild set


def cremad_run_config(data_dir, cremad_name, wild_name):
    """configs/cremad.py pointed at the fake sets, with the tiny synthetic config's models and schedules."""
    from ppfer_jax.config import load_config

    config, tiny = load_config("configs/cremad.py"), load_config("configs/synthetic.py:tiny")
    with config.unlocked():
        config.data.update(dict(data_dir=str(data_dir), tfds_name=cremad_name, wild_tfds_name=wild_name,
                                num_identities=len(ACTORS), num_frames=FRAMES, image_size=SIZE, val_fraction=0.25))
        config.model, config.train, config.rng_impl, config.dtype = tiny.model, tiny.train, tiny.rng_impl, "float32"
        config.train.augment.resized_crop_scale = (0.8, 1.0)
    return config


@pytest.fixture(scope="module")
def prepared_run_config(cremad_built, dfew_tree):
    summary, _, data_dir = cremad_built
    wild = prepare_dfew(dfew_tree, data_dir, image_size=SIZE, one_random_frame=True)
    return cremad_run_config(data_dir, f"cremad/{summary['config']}", f"dfew/{wild['config']}")


def test_prepared_splits_hold_out_val_from_train_and_map_dfew_labels_onto_cremad(prepared_run_config, cremad_built):
    from data_pipelines import sources

    config, (_, splits, _) = prepared_run_config, cremad_built
    train, val, test = (sources.load_split(config, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (18, 6, 12)  # 24 train clips, a quarter held out
    assert not set(train.indices) & set(val.indices) and set(train.indices) | set(val.indices) == set(range(24))
    assert set(val[0]) == {"video", "identity", "expression", "eval_frame"}
    names = [example["name"].decode() for example in splits["train"].values()]
    assert len(set(names)) == 24
    for split in (train, val, test):
        frames = np.asarray([split[i]["eval_frame"] for i in range(len(split))])
        assert ((0 <= frames) & (frames < FRAMES)).all()
    wild = sources.load_split(config, "wild")
    # 14 DFEW train clips in the frame set; the two of class 'surprise' (label 5) have no CREMA-D class.
    assert len(wild.source) == 14 and len(wild) == 12 and wild[0]["video"].shape == (1, SIZE, SIZE, 3)
    kept = [dfew.LABELS[int(wild.source[int(i)]["expression"])] for i in wild.indices]
    mapped = [synthetic.EXPRESSIONS[int(wild[k]["expression"])] for k in range(len(wild))]
    assert "surprise" not in kept
    assert all(sources.NAME_ALIASES.get(a, a) == b for a, b in zip(kept, mapped)) and "anger" in mapped


@pytest.mark.slow  # an end-to-end run
def test_run_trains_and_evaluates_on_prepared_cremad_with_dfew_frames(prepared_run_config, tmp_path):
    from ppfer_jax import pipeline
    from ppfer_jax.recipes import run
    from ppfer_jax.stage import loader_augment

    config = prepared_run_config
    crop = loader_augment(config, run.STAGE_BY_NAME["s3/utility"])
    assert isinstance(crop, RandomResizedCrop) and crop.scale == (0.8, 1.0)
    assert loader_augment(config, run.STAGE_BY_NAME["s1/privacy"]) is None
    report = pipeline.run(config, tmp_path)
    results = report["results"]
    assert results["num_test_clips"] == 12 and results["chance_plr"] == pytest.approx(1 / 3)
    for row in results["table1"].values():  # each a share of the 12 test clips
        assert all(v * 12 == pytest.approx(round(v * 12), abs=1e-6) for v in row.values()), row
    assert (tmp_path / "report.png").stat().st_size > 0


# ----------------------------------------------------------------------------------------------------------------
# The README's real-data commands as a user runs them: default options, so the registered TFDS configs
# (cremad/112, dfew/fold1-112-frame) and CREMA-D's 2,232-clip test split


USER_ACTORS = range(1001, 1009)  # 8 actors x 12 sentences x 6 emotions x 4 levels = 2,304 clips > 2,232
USER_SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
USER_CORRUPT = "1009_DFA_ANG_XX.flv"


def readme_commands() -> dict[str, list[str]]:
    """The commands of the README's "Real data" block, tokenised as a shell would, keyed 'prepare cremad',
    'prepare dfew' and 'run'."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("\n## Real data\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]
    keyed = {" ".join(c[1:3]) if c[1] == "prepare" else c[1]: c for c in commands}
    assert set(keyed) == {"prepare cremad", "prepare dfew", "run"} and all(c[0] == "ppfer-jax" for c in commands)
    return keyed


def as_typed(command: list[str]) -> list[str]:
    """The arguments ``ppfer-jax`` receives from a shell: ``~`` expanded (to the fake $HOME)."""
    return [os.path.expanduser(arg) if arg.startswith("~") else arg for arg in command[1:]]


def write_tiny_flv(path, num_frames=4, side=16):
    """A real FLV of ``num_frames`` flat frames, frame i at grey(i): cheap enough for thousands of files."""
    with av.open(str(path), "w") as output:
        stream = output.add_stream("flv", rate=30)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((side, side, 3), grey(i), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)


@pytest.fixture(scope="module")
def user_home(tmp_path_factory):
    """A fake $HOME holding ~/CREMA-D/VideoFlash (2,305 tiny FLVs, one corrupt) and ~/DFEW (21 clips), after
    the README's two `prepare` commands ran there exactly as written; returns (home, their stdout)."""
    home = tmp_path_factory.mktemp("home")
    videos = home / "CREMA-D" / cremad.VIDEO_DIR
    videos.mkdir(parents=True)
    for names in itertools.product(USER_ACTORS, USER_SENTENCES, cremad.EMOTION_CODES, cremad.LEVELS):
        write_tiny_flv(videos / ("_".join(map(str, names)) + ".flv"))
    (videos / USER_CORRUPT).write_bytes(b"FLV\x01" + bytes(300))
    for name in itertools.chain(DFEW_TRAIN, DFEW_TEST):
        frames = home / "DFEW" / dfew.CLIP_DIR / name.zfill(5)
        frames.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((40, 40, 3), grey(i), np.uint8)).save(frames / f"{i + 1}.jpg")
    write_labels(home / "DFEW" / dfew.LABEL_DIR / "train(single-labeled)" / "set_1.csv", DFEW_TRAIN)
    write_labels(home / "DFEW" / dfew.LABEL_DIR / "test(single-labeled)" / "set_1.csv", DFEW_TEST)
    commands = readme_commands()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as out:
        patch.setenv("HOME", str(home))
        patch.chdir(home)
        for name in ("prepare cremad", "prepare dfew"):
            assert main(as_typed(commands[name])) == 0, name
    return home, out.getvalue()


@pytest.mark.slow  # builds 2,304 videos
def test_readme_prepare_cremad_builds_the_registered_112_set_with_the_papers_split(user_home):
    home, out = user_home
    data_dir = home / "tensorflow_datasets"
    assert "cremad (112): prepared at" in out and "test: 2232 clips" in out and "train: 72 clips" in out
    assert out.count("8 actors, ") == 2  # every actor in both splits
    assert f"{USER_CORRUPT}: unreadable video" in out and "skipped 1 of 2305 listed files" in out
    builder = tfds.builder("cremad/112", data_dir=data_dir)  # the ordinary TFDS way
    assert isinstance(builder, cremad.Cremad) and builder.builder_config.test_clips == cremad.PAPER_TEST_CLIPS
    assert {s: builder.info.splits[s].num_examples for s in ("train", "test")} == {"train": 72, "test": 2232}
    test = tfds.data_source("cremad/112", data_dir=data_dir, split="test")
    example = test[0]
    assert example["video"].shape == (16, 112, 112, 3) and example["video"].dtype == np.uint8
    # 4-frame videos: the 16 kept frames are 0, 1, 2, 3 and then the last repeated
    np.testing.assert_allclose(clip_greys(example["video"]), [grey(min(i, 3)) for i in range(16)], atol=8)
    names = {test[i]["name"].decode()[:4] for i in range(0, 2232, 97)}
    assert names <= {str(a) for a in USER_ACTORS}


@pytest.mark.slow  # builds the README's sets
def test_readme_prepare_dfew_builds_the_registered_one_frame_set(user_home):
    home, out = user_home
    assert "dfew (fold1-112-frame): prepared at" in out and "train: 14 clips" in out
    builder = tfds.builder("dfew/fold1-112-frame", data_dir=home / "tensorflow_datasets")
    assert isinstance(builder, dfew.Dfew) and builder.builder_config.clip.one_random_frame
    source = builder.as_data_source(split="train")
    assert len(source) == 14 and source[0]["video"].shape == (1, 112, 112, 3)


@pytest.mark.slow  # builds the README's sets
def test_readme_run_reads_every_split_of_the_prepared_sets_at_their_default_names(user_home, monkeypatch):
    """The README's `run` command as written, down to the stages: the pipeline itself is stubbed out (a
    full run at 2,232 test clips takes many minutes on a CPU; the tests above and benchmarks/RESULTS.md's
    rehearsal train on prepared sets), so what is checked is that configs/cremad.py finds the sets that the
    two `prepare` commands built, with their default names, in their default data_dir."""
    from data_pipelines import sources
    from ppfer_jax import pipeline, report

    home, _ = user_home
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    read = {}

    def read_every_split(config, workdir, rerun=None, jobs=None):
        read.update({split: sources.load_split(config, split) for split in sources.SPLITS})
        read["workdir"] = workdir
        return {}

    monkeypatch.setattr(pipeline, "run", read_every_split)
    monkeypatch.setattr(report, "tables", lambda result: "")
    assert main(as_typed(readme_commands()["run"])) == 0
    assert read.pop("workdir") == Path("runs/cremad")
    assert {split: len(source) for split, source in read.items()} == {"train": 68, "val": 4, "test": 2232,
                                                                     "wild": 12}  # DFEW less 2 surprise
    for split, source in read.items():
        frames = 1 if split == "wild" else 16
        assert source[0]["video"].shape == (frames, 112, 112, 3), split


@pytest.mark.slow  # builds a 224 px set
def test_prepare_dfew_at_224_px_builds_the_registered_16_frame_set(user_home, tmp_path, capsys):
    assert main(["prepare", "dfew", "--manual_dir", str(user_home[0] / "DFEW"), "--data_dir", str(tmp_path),
                 "--fold", "1", "--image_size", "224"]) == 0
    assert "dfew (fold1-224): prepared at" in capsys.readouterr().out
    source = tfds.data_source("dfew/fold1-224", data_dir=tmp_path, split="test")
    assert len(source) == 7 and source[0]["video"].shape == (16, 224, 224, 3)


def test_every_registered_config_gets_past_tfds_to_the_files(tmp_path):
    """TFDS refuses a new config object named like a registered one; with every registered config's options,
    `prepare` must reach the files (here all bad, so it stops there, naming them)."""
    crema = tmp_path / "crema"
    crema.mkdir()
    (crema / USER_CORRUPT).write_bytes(b"not a video")
    for config in cremad.Cremad.BUILDER_CONFIGS:
        with pytest.raises(ValueError, match=f"1 of 1 files .*{USER_CORRUPT}"):
            cremad.prepare(crema, tmp_path / "data", image_size=config.clip.image_size, progress=False)
    empty = tmp_path / "dfew"
    for fold in dfew.FOLDS:
        for split, file in dfew.SPLIT_FILES.items():
            write_labels(empty / dfew.LABEL_DIR / file.format(fold=fold), {str(fold + (split == "test")): 1})
    (empty / dfew.CLIP_DIR).mkdir(parents=True)
    for config in dfew.Dfew.BUILDER_CONFIGS:
        with pytest.raises(ValueError, match="2 of 2 files .*neither a frame directory nor a video"):
            dfew.prepare(empty, tmp_path / "data", fold=config.fold, image_size=config.clip.image_size,
                         one_random_frame=config.clip.one_random_frame, progress=False)


def test_registered_or_custom_names_a_registered_config_and_keeps_a_custom_one():
    assert video.registered_or_custom(cremad.Cremad, cremad.config_for(224)) == "224"
    custom = cremad.config_for(112, test_clips=12)
    assert video.registered_or_custom(cremad.Cremad, custom) is custom and custom.name == "112-test12"
    assert video.registered_or_custom(dfew.Dfew, dfew.config_for(3, one_random_frame=True)) == "fold3-112-frame"
    clash = dataclasses.replace(cremad.config_for(112), test_clips=12)  # options its name does not say
    with pytest.raises(ValueError, match="config '112': the requested options .* differ from the registered"):
        video.registered_or_custom(cremad.Cremad, clash)
