"""MTCNN in Flax against facenet-pytorch's, on real photographs (scikit-image's): each network's outputs on the
same input, the area resize against torch's, and the whole detector's boxes and landmarks (within 1 px). Skipped
only where facenet-pytorch (the independent reference, and the source of the weights) cannot be imported."""

import json

import numpy as np
import pytest

facenet_pytorch = pytest.importorskip("facenet_pytorch")
torch = pytest.importorskip("torch")
skimage_data = pytest.importorskip("skimage.data")

from facenet_pytorch.models.mtcnn import MTCNN, ONet, PNet, RNet  # noqa: E402

from ppfer_jax import face_detection as fd  # noqa: E402
from ppfer_jax.cli import main  # noqa: E402
from ppfer_jax.models.mtcnn import NETWORKS  # noqa: E402


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    return fd.convert_mtcnn(tmp_path_factory.mktemp("detector") / "mtcnn")


@pytest.fixture(scope="module")
def detector(detector_dir):
    return fd.load_detector(detector_dir)


@pytest.fixture(scope="module")
def reference():
    return MTCNN(keep_all=True)


def photos():
    astronaut = skimage_data.astronaut()
    return {"astronaut": astronaut, "two_faces": np.ascontiguousarray(np.concatenate([astronaut, astronaut[:, ::-1]], 1)),
            "coffee": skimage_data.coffee()}


@pytest.mark.parametrize("name, torch_net, size", [("pnet", PNet, 37), ("rnet", RNet, 24), ("onet", ONet, 48)])
def test_each_converted_network_gives_torchs_outputs(detector, name, torch_net, size):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, size, size + (5 if name == "pnet" else 0), 3)).astype(np.float32)
    with torch.no_grad():
        want = [o.numpy() for o in torch_net()(torch.from_numpy(x).permute(0, 3, 1, 2))]
    got = [np.asarray(o) for o in fd._apply(name)(detector.variables[name], x)]
    if name == "pnet":  # torch: NCHW maps
        want = [np.moveaxis(w, 1, -1) for w in want]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=2e-5)


def test_area_resize_is_torchs(detector):
    image = photos()["astronaut"]
    boxes = np.array([[3, 5, 40, 31], [100, 80, 229, 250], [0, 0, 512, 512]])
    got = fd.area_crops(image, boxes, 24)
    for box, crop in zip(boxes, got):
        part = torch.from_numpy(image[box[1]:box[3], box[0]:box[2]].astype(np.float32)).permute(2, 0, 1)[None]
        want = torch.nn.functional.interpolate(part, size=(24, 24), mode="area")[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(crop, want, atol=1e-3)
    rows = fd.area_matrix(512, 157)
    torch_rows = torch.nn.functional.adaptive_avg_pool1d(torch.eye(512)[None], 157)[0].numpy().T
    np.testing.assert_allclose(rows, torch_rows, atol=1e-6)


@pytest.mark.parametrize("name, faces", [("astronaut", 1), ("two_faces", 2), ("coffee", 0)])
def test_the_detector_matches_facenet_pytorch_within_a_pixel(detector, reference, name, faces):
    image = photos()[name]
    got = detector.detect(image)
    boxes, _, points = reference.detect(image, landmarks=True)
    assert len(got) == faces
    if faces == 0:
        assert boxes is None
        return
    boxes, points = np.asarray(boxes, float), np.asarray(points, float)
    order = np.argsort(-(got.boxes[:, 2] - got.boxes[:, 0]) * (got.boxes[:, 3] - got.boxes[:, 1]))  # theirs: largest first
    assert np.abs(got.boxes[order] - boxes).max() < 1.0
    assert np.abs(got.landmarks[order] - points).max() < 1.0
    assert np.all(got.scores > 0.99)


def test_a_batch_gives_each_images_own_faces(detector):
    astronaut = photos()["astronaut"]
    batch = np.stack([astronaut, astronaut[:, ::-1], np.zeros_like(astronaut)])
    found = detector.detect_batch(batch)
    assert [len(f) for f in found] == [1, 1, 0]
    np.testing.assert_allclose(found[0].boxes, detector.detect(astronaut).boxes, atol=1e-3)
    mirrored = found[1].boxes[0]
    assert abs((512 - mirrored[2]) - found[0].boxes[0, 0]) < 3  # the mirrored face where the mirror puts it


def test_the_cli_converts_from_the_wheel_or_the_package_and_loads_without_torch(tmp_path, capsys):
    out = tmp_path / "mtcnn"
    assert main(["convert", "--model", "mtcnn", "--out", str(out)]) == 0
    assert f"--detector {out}" in capsys.readouterr().out
    record = json.loads((out / fd.DETECTOR_FILE).read_text())
    assert record["detector"] == "mtcnn" and "facenet-pytorch" in record["source"]
    assert sorted(p.name for p in out.iterdir()) == ["detector.json", "onet", "pnet", "rnet"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directory left


def test_a_bad_source_or_directory_names_the_file(tmp_path):
    (tmp_path / "pnet.pt").write_bytes(b"")
    with pytest.raises(fd.DetectorError, match="missing .*rnet.pt"):
        fd.convert_mtcnn(tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()
    with pytest.raises(fd.DetectorError, match="no detector.json"):
        fd.load_detector(tmp_path)


def test_a_converted_file_that_does_not_fit_is_refused(detector_dir, tmp_path):
    import shutil

    broken = tmp_path / "mtcnn"
    shutil.copytree(detector_dir, broken)
    shutil.copytree(detector_dir / "pnet", broken / "rnet", dirs_exist_ok=True)  # PNet's weights where RNet's go
    with pytest.raises(fd.DetectorError, match="rnet"):
        fd.load_detector(broken)


def test_networks_are_channels_last_and_named_as_facenet_pytorch():
    torch_keys = {k.rsplit(".", 1)[0] for k in PNet().state_dict()}
    import jax

    params = jax.eval_shape(lambda: NETWORKS["pnet"]().init(jax.random.key(0), np.zeros((1, 12, 12, 3))))["params"]
    assert set(params) == torch_keys
    assert params["conv1"]["kernel"].shape == (3, 3, 3, 10)


def test_nms_rules():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [2, 2, 8, 8]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    assert fd.nms(boxes, scores, 0.5).tolist() == [3, 0, 2]  # [1] overlaps [0] by IoU 0.68; [3] inside [0]: 0.36
    assert fd.nms(boxes, scores, 0.7, overlap="min").tolist() == [3, 2]  # [0] and [1] contain [3]: min-overlap 1
