"""The built-in synthetic talking-face set: determinism, labels, errors, figures, and that it exercises the method.

The "exercises the method" probes are closed-form ridge classifiers fit on the
train split and scored on the test split (same people, other clips) at 32 px:

* identity from the Haar low band (LL coefficients of one random frame);
* identity from the high band, as |detail| energy pooled on a 4x4 grid (log) --
  raw detail coefficients also work but are less stable under head motion -- and
  from frames rebuilt with the low band removed;
* expression from face-aligned frames (resampled on a face-centred grid from the
  clip's true head pose, i.e. a perfect face aligner, since a linear probe cannot
  undo sub-pixel head motion): all frames of the clip versus one random frame.
"""

import os
import pickle

import grain
import ml_collections
import numpy as np
import pytest
import pywt
from PIL import Image

from data_pipelines import synthetic
from data_pipelines.synthetic import EXPRESSIONS, SPLITS, SyntheticFaces, SyntheticSpec
from ppfer_jax.figures import frame_grid, save_png

SMALL = SyntheticSpec(num_identities=4, num_wild_identities=3, clips_per_identity_train=12,
                      clips_per_identity_test=6, clips_per_identity_wild=6, num_frames=4)
PROBE = SyntheticSpec(clips_per_identity_train=48)  # 12 people; 576 train / 144 test clips of 8 frames, 32 px
IDENTITY_CHANCE, EXPRESSION_CHANCE = 1 / PROBE.num_identities, 1 / len(EXPRESSIONS)


# ---------------------------------------------------------------------------------------------------------------
# Records, determinism, labels


def test_same_seed_split_index_gives_identical_bytes_without_caches():
    first = SyntheticFaces(SMALL, "test")[5]["video"]
    synthetic._sample_traits.cache_clear()  # re-derive everything from (seed, split, index)
    synthetic._detail_map.cache_clear()
    again = SyntheticFaces(SMALL, "test")[5]["video"]
    np.testing.assert_array_equal(first, again)


def test_other_seed_index_or_split_gives_other_clips():
    clip = SyntheticFaces(SMALL, "train")[3]["video"]
    other_seed = SyntheticFaces(SyntheticSpec(**{**vars(SMALL), "seed": 1}), "train")[3]["video"]
    other_index = SyntheticFaces(SMALL, "train")[9]["video"]  # same person and expression, another take
    other_split = SyntheticFaces(SMALL, "test")[3]["video"]
    for other in (other_seed, other_index, other_split):
        assert np.abs(clip.astype(int) - other).mean() > 2.0


@pytest.mark.parametrize("image_size, num_frames", [(32, 8), (64, 3), (112, 2)])
def test_record_shapes_and_dtypes(image_size, num_frames):
    spec = SyntheticSpec(**{**vars(SMALL), "image_size": image_size, "num_frames": num_frames})
    record = SyntheticFaces(spec, "wild")[7]
    assert record["video"].shape == (num_frames, image_size, image_size, 3)
    assert record["video"].dtype == np.uint8
    assert record["identity"].dtype == np.int32 and record["identity"].shape == ()
    assert record["expression"].dtype == np.int32 and record["expression"].shape == ()
    assert record["clip_id"].dtype == np.int64 and record["clip_id"].shape == ()
    assert 20 < record["video"].mean() < 235 and record["video"].std() > 10  # a picture, not a flat field


@pytest.mark.parametrize("split", SPLITS)
def test_every_split_is_balanced_over_identity_and_expression(split):
    source = SyntheticFaces(SMALL, split)
    assert len(source) == SMALL.identities(split) * SMALL.clips_per_identity(split)
    counts = np.zeros((SMALL.identities(split), len(EXPRESSIONS)), int)
    for index in range(len(source)):
        counts[source.labels(index)] += 1
    assert (counts == SMALL.clips_per_identity(split) // len(EXPRESSIONS)).all()
    record = source[len(source) - 1]
    assert (record["identity"], record["expression"]) == source.labels(len(source) - 1)


def test_clip_ids_are_unique_across_splits():
    ids = [int(record["clip_id"]) for split in SPLITS for record in SyntheticFaces(SMALL, split)]
    assert len(set(ids)) == len(ids)


def test_train_val_and_test_share_people_and_wild_and_open_set_people_are_different():
    def vectors(split):
        return np.stack([synthetic.trait_vector(synthetic.identity_traits(PROBE, split, k))
                         for k in range(PROBE.identities(split))])

    train, test, wild = vectors("train"), vectors("test"), vectors("wild")
    np.testing.assert_array_equal(train, test)
    np.testing.assert_array_equal(train, vectors("val"))
    between_train = np.linalg.norm(train[:, None] - train[None], axis=-1)[np.triu_indices(len(train), 1)]
    wild_to_train = np.linalg.norm(wild[:, None] - train[None], axis=-1)
    assert wild_to_train.min() > 0.3 * np.median(between_train)  # measured: 0.76 vs median 1.63
    open_set = vectors("openset")
    for others in (train, wild):
        assert np.linalg.norm(open_set[:, None] - others[None], axis=-1).min() > 0.3 * np.median(between_train)


def test_source_is_a_picklable_grain_random_access_source():
    source = SyntheticFaces(SMALL, "train")
    assert isinstance(source, grain.sources.RandomAccessDataSource)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(source))[2]["video"], source[2]["video"])
    batch = next(iter(grain.MapDataset.source(source).batch(3)))
    assert batch["video"].shape == (3, SMALL.num_frames, 32, 32, 3)


def test_spec_from_config_reads_the_data_block():
    config = ml_collections.ConfigDict({"seed": 3, "data": {
        "num_identities": 5, "num_wild_identities": 2, "clips_per_identity_train": 12,
        "clips_per_identity_test": 6, "clips_per_identity_wild": 18, "clips_per_identity_val": 12, "num_frames": 4,
        "image_size": 64, "num_expressions": 6}})
    spec = synthetic.spec_from_config(config)
    assert (spec.seed, spec.num_identities, spec.clips_per_identity_wild, spec.image_size) == (3, 5, 18, 64)
    assert spec.num_clips("wild") == 36 and spec.num_clips("val") == 60
    config.data.num_expressions = 7
    with pytest.raises(ValueError, match="num_expressions"):
        synthetic.spec_from_config(config)


# ---------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("field, value", [
    ("num_identities", 1), ("num_identities", 2.5), ("num_wild_identities", 0), ("clips_per_identity_train", 7),
    ("clips_per_identity_test", 0), ("clips_per_identity_wild", True), ("num_frames", 1), ("image_size", 33),
    ("image_size", 8), ("seed", -1), ("seed", 2**63),
])
def test_bad_spec_field_is_named(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticSpec(**{field: value})


def test_unknown_split_lists_the_valid_ones():
    with pytest.raises(ValueError, match="split: expected one of train, val, test, wild, openset, got 'validation'"):
        SyntheticFaces(SMALL, "validation")


@pytest.mark.parametrize("index", [-1, SMALL.num_clips("test")])
def test_index_out_of_range_raises_index_error(index):
    with pytest.raises(IndexError, match="index"):
        SyntheticFaces(SMALL, "test")[index]


def test_bad_identity_and_traits_are_named():
    with pytest.raises(ValueError, match="identity"):
        synthetic.identity_traits(SMALL, "wild", SMALL.num_wild_identities)
    with pytest.raises(TypeError, match="traits"):
        SyntheticFaces(SMALL, "test").render_with_identity(0, synthetic.trait_vector(
            synthetic.identity_traits(SMALL, "wild", 0)))


# ---------------------------------------------------------------------------------------------------------------
# Probes: the set carries identity in both bands and expression in the dynamics


def _render(split):
    source = SyntheticFaces(PROBE, split)
    records = [source[index] for index in range(len(source))]
    videos = np.stack([record["video"] for record in records]).astype(np.float32) / 255.0
    return source, videos, np.array([record["identity"] for record in records]), np.array(
        [record["expression"] for record in records])


@pytest.fixture(scope="module")
def probe_data():
    return {split: _render(split) for split in ("train", "test")}


def _ridge_accuracy(train_features, train_labels, test_features, test_labels, penalty):
    """Fits a one-vs-all ridge classifier in closed form on standardised features; returns test accuracy."""
    train_features, test_features = train_features.reshape(len(train_features), -1), test_features.reshape(
        len(test_features), -1)
    mean, std = train_features.mean(0), train_features.std(0) + 1e-6
    a, b = (train_features - mean) / std, (test_features - mean) / std
    targets = np.eye(train_labels.max() + 1)[train_labels]
    weights = a.T @ np.linalg.solve(a @ a.T + penalty * np.eye(len(a)), targets - targets.mean(0))
    return float(((b @ weights).argmax(1) == test_labels).mean())


def _one_random_frame(videos, seed=0):
    frames = np.random.default_rng(seed).integers(videos.shape[1], size=len(videos))
    return videos[np.arange(len(videos)), frames]


def _haar(frames):
    low, details = pywt.dwt2(frames, "haar", axes=(-3, -2))
    return low, details


def _pooled_log_energy(bands, grid=4):
    """log mean |coefficient| on a grid x grid layout: tolerant of the head's sub-pixel motion."""
    energy = np.abs(np.stack(bands, axis=-1))
    n, height, width = energy.shape[:3]
    pooled = energy.reshape(n, grid, height // grid, grid, width // grid, -1).mean(axis=(2, 4))
    return np.log(pooled + 1e-3)


def test_identity_is_decodable_from_the_low_band(probe_data):
    (_, train, train_ids, _), (_, test, test_ids, _) = probe_data["train"], probe_data["test"]
    low_train, low_test = _haar(_one_random_frame(train))[0], _haar(_one_random_frame(test, seed=1))[0]
    accuracy = _ridge_accuracy(low_train, train_ids, low_test, test_ids, penalty=100.0)
    assert accuracy > 8 * IDENTITY_CHANCE, accuracy  # measured 1.00 over seeds 0-2


def test_identity_is_decodable_from_the_high_band(probe_data):
    (_, train, train_ids, _), (_, test, test_ids, _) = probe_data["train"], probe_data["test"]
    high_train, high_test = _haar(_one_random_frame(train))[1], _haar(_one_random_frame(test, seed=1))[1]
    accuracy = _ridge_accuracy(_pooled_log_energy(high_train), train_ids, _pooled_log_energy(high_test), test_ids,
                               penalty=100.0)
    assert accuracy > 8 * IDENTITY_CHANCE, accuracy  # measured 1.00 over seeds 0-2


def test_identity_survives_removing_the_low_band(probe_data):
    """Frames rebuilt from the detail bands alone (LL zeroed) still tell people apart."""
    def high_only(videos, seed):
        low, details = _haar(_one_random_frame(videos, seed))
        rebuilt = pywt.idwt2((np.zeros_like(low), details), "haar", axes=(-3, -2))
        return _pooled_log_energy([rebuilt], grid=8)

    (_, train, train_ids, _), (_, test, test_ids, _) = probe_data["train"], probe_data["test"]
    accuracy = _ridge_accuracy(high_only(train, 0), train_ids, high_only(test, 1), test_ids, penalty=100.0)
    assert accuracy > 6 * IDENTITY_CHANCE, accuracy  # measured 0.99-1.00


def _face_aligned(source, videos, shown=None, grid=24):
    """Each frame resampled bilinearly on a grid x grid face-centred patch from the clip's true head pose.

    shown: the Traits of the person in every clip, when not the clip's own (a swapped identity).
    """
    axis = np.linspace(-1.0, 1.0, grid, dtype=np.float32)
    size = videos.shape[2]
    aligned = []
    for index, video in enumerate(videos):
        _, nuisance = source.clip_motion(index)
        person = shown or synthetic.identity_traits(source.spec, source.split, source.labels(index)[0])
        scale = (person.head_scale * nuisance.scale)[:, None, None]
        cos, sin = np.cos(nuisance.angle)[:, None, None], np.sin(nuisance.angle)[:, None, None]
        u, v = axis[None, None, :], axis[None, :, None] + 0.15  # face centre to just below the mouth
        x = nuisance.centre[:, 0, None, None] + scale * (cos * u - sin * v)
        y = nuisance.centre[:, 1, None, None] + scale * (sin * u + cos * v)
        column = np.clip((x + 1) * size / 2 - 0.5, 0, size - 1.001)
        row = np.clip((y + 1) * size / 2 - 0.5, 0, size - 1.001)
        c0, r0 = column.astype(int), row.astype(int)
        fc, fr = (column - c0)[..., None], (row - r0)[..., None]
        t = np.arange(len(video))[:, None, None]
        top = video[t, r0, c0] * (1 - fc) + video[t, r0, c0 + 1] * fc
        bottom = video[t, r0 + 1, c0] * (1 - fc) + video[t, r0 + 1, c0 + 1] * fc
        aligned.append(top * (1 - fr) + bottom * fr)
    return np.stack(aligned)


@pytest.fixture(scope="module")
def aligned_faces(probe_data):
    return {split: _face_aligned(probe_data[split][0], probe_data[split][1]) for split in ("train", "test")}


def test_expression_needs_the_clip_not_one_frame(probe_data, aligned_faces):
    train_labels, test_labels = probe_data["train"][3], probe_data["test"][3]
    clip_accuracy = _ridge_accuracy(aligned_faces["train"], train_labels, aligned_faces["test"], test_labels,
                                    penalty=30.0)
    frame_accuracy = _ridge_accuracy(_one_random_frame(aligned_faces["train"]), train_labels,
                                     _one_random_frame(aligned_faces["test"], seed=1), test_labels, penalty=30.0)
    assert clip_accuracy > 3 * EXPRESSION_CHANCE, clip_accuracy  # measured 0.86-0.94 over seeds 0-2
    assert clip_accuracy > frame_accuracy + 0.15, (clip_accuracy, frame_accuracy)  # measured frame 0.68-0.73


def _swapped(source, traits):
    return np.stack([source.render_with_identity(index, traits)["video"]
                     for index in range(len(source))]).astype(np.float32) / 255.0


def test_render_with_identity_keeps_the_motion_and_changes_the_person(probe_data):
    """Every clip re-rendered with one outside person: identity is gone, expression still reads out."""
    (train_source, train, train_ids, train_labels), (test_source, _, test_ids, test_labels) = (
        probe_data["train"], probe_data["test"])
    own = test_source.render_with_identity(5, synthetic.identity_traits(PROBE, "test", int(test_ids[5])))
    np.testing.assert_array_equal(own["video"], test_source[5]["video"])

    outsider = synthetic.identity_traits(PROBE, "wild", 0)
    swapped_train, swapped_test = _swapped(train_source, outsider), _swapped(test_source, outsider)
    recognised = _ridge_accuracy(_haar(_one_random_frame(train))[0], train_ids,
                                 _haar(_one_random_frame(swapped_test))[0], test_ids, penalty=100.0)
    assert recognised < 2 * IDENTITY_CHANCE, recognised  # measured 0.08-0.10
    expression = _ridge_accuracy(_face_aligned(train_source, swapped_train, outsider), train_labels,
                                 _face_aligned(test_source, swapped_test, outsider), test_labels, penalty=30.0)
    assert expression > 3 * EXPRESSION_CHANCE, expression  # measured 0.86-0.91


# ---------------------------------------------------------------------------------------------------------------
# Figures


def test_preview_grid_shows_one_labelled_row_per_clip():
    from ppfer_jax.figures import synthetic_preview

    small, larger = synthetic_preview(SMALL, "wild", 2), synthetic_preview(SMALL, "wild", 3)
    assert small.dtype == np.uint8 and small.ndim == 3 and small.shape[2] == 3
    assert larger.shape[0] > small.shape[0] and larger.shape[1] == small.shape[1]
    assert small[:, :40].min() < 100  # dark label text left of the frames


def test_frame_grid_layout_and_float_uint8_agree():
    clip = np.random.default_rng(0).integers(0, 256, (5, 8, 6, 3)).astype(np.uint8)
    from_uint8 = frame_grid([clip, clip], num_frames=3, scale=2)
    gap = 2
    assert from_uint8.shape == (gap + 2 * (16 + gap), gap + 3 * (12 + gap), 3)
    np.testing.assert_array_equal(frame_grid([clip.astype(np.float32) / 255.0, clip], num_frames=3, scale=2),
                                  from_uint8)
    np.testing.assert_array_equal(from_uint8[gap:gap + 16:2, gap:gap + 12:2], clip[0])  # nearest enlargement
    np.testing.assert_array_equal(from_uint8[gap:gap + 16:2, gap + 2 * 14:gap + 2 * 14 + 12:2], clip[4])  # last


def test_frame_grid_takes_grey_half_size_rows_and_labels():
    clip = np.random.default_rng(1).random((2, 8, 8, 3), np.float32)
    grey_half = np.full((2, 4, 4, 1), 2.0, np.float32)  # clipped to white
    grid = frame_grid([clip, grey_half], row_labels=["frames", "low band"])
    unlabelled = frame_grid([clip, grey_half])
    assert grid.shape[0] == unlabelled.shape[0] and grid.shape[1] > unlabelled.shape[1]
    label_width = grid.shape[1] - unlabelled.shape[1]
    np.testing.assert_array_equal(grid[:, label_width:], unlabelled)
    np.testing.assert_array_equal(unlabelled[2 + 8 + 2:2 + 16 + 2, 2:2 + 8], 255)  # enlarged 2x to fill the cell


@pytest.mark.parametrize("rows, kwargs, field", [
    ([], {}, "rows"), ([np.zeros((4, 4, 3), np.uint8)], {}, r"rows\[0\]"),
    ([np.zeros((1, 4, 4, 2), np.uint8)], {}, r"rows\[0\]"), ([np.zeros((1, 4, 4, 3), np.int64)], {}, r"rows\[0\]"),
    ([np.zeros((1, 4, 4, 3), np.uint8)], {"row_labels": ["a", "b"]}, "row_labels"),
    ([np.zeros((1, 4, 4, 3), np.uint8)], {"scale": 0}, "scale"),
    ([np.zeros((1, 4, 4, 3), np.uint8)], {"num_frames": 0}, "num_frames"),
])
def test_frame_grid_bad_input_is_named(rows, kwargs, field):
    with pytest.raises(ValueError, match=field):
        frame_grid(rows, **kwargs)


def test_save_png_writes_a_readable_file_atomically(tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (7, 9, 3)).astype(np.uint8)
    path = tmp_path / "new" / "dir" / "grid.png"
    save_png(path, image)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    assert os.listdir(path.parent) == ["grid.png"]  # no temp file left behind
    with pytest.raises(ValueError, match="image"):
        save_png(tmp_path / "bad.png", image.astype(np.float32))
    assert not (tmp_path / "bad.png").exists()
