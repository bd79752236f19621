"""The command line as a user runs it: show-data writes a PNG; bad keys stop with one clear line."""

import numpy as np
from PIL import Image

from ppfer_jax.cli import main


def test_show_data_writes_a_png_grid_of_clips(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["show-data", "--config", "configs/synthetic.py:tiny", "--clips", "3", "--out", str(out)]) == 0
    image = np.asarray(Image.open(out))
    assert image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] >= 3 * 32  # three clip rows of 32 px frames
    assert image.std() > 10  # faces, not a blank canvas
    assert "3 train clips" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temp file left behind


def test_unknown_config_key_stops_with_the_key_named(tmp_path, capsys):
    code = main(["show-data", "--config.data.imag_size=64", "--out", str(tmp_path / "x.png")])
    assert code == 2
    assert "unknown config key 'data.imag_size'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_reproduce_names_an_unknown_row_before_training_anything(tmp_path, capsys):
    code = main(["reproduce", "--config", "configs/synthetic.py:tiny", "--workdir", str(tmp_path / "w"),
                 "--rows", "blur1, optical_flw"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown rows ['optical_flw']" in err and "optical_flow" in err
    assert not (tmp_path / "w").exists()
