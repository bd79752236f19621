"""Config loading and overrides: typos and type mistakes stop with a message naming the key."""

import pytest

from ppfer_jax.config import load_config


def test_packaged_default_loads_and_overrides_apply():
    config = load_config("configs/synthetic.py", ["--config.seed=3", "data.image_size=64",
                                                  "model.enhancer_high.out_range=(-2.0, 2.0)"])
    assert config.seed == 3
    assert config.data.image_size == 64
    assert config.model.enhancer_high.out_range == (-2.0, 2.0)


def test_config_arg_selects_variant():
    tiny, default = load_config("configs/synthetic.py:tiny"), load_config("configs/synthetic.py")
    assert tiny.data.num_frames < default.data.num_frames
    assert load_config("configs/cremad.py:224").data.image_size == 224
    with pytest.raises(ValueError, match="112 or 224"):
        load_config("configs/cremad.py:100")


def test_loaded_config_is_locked_against_new_keys():
    config = load_config("configs/synthetic.py")
    with pytest.raises(AttributeError):
        config.data.imagesize = 3


@pytest.mark.parametrize("override, error, pattern", [
    ("data.imag_size=64", KeyError, "data.imag_size.*did you mean image_size"),
    ("nope=1", KeyError, "no 'nope' under <top level>"),
    ("seed=abc", ValueError, "'seed' holds int"),
    ("data.image_size=3.5", ValueError, "parses as float"),
    ("model=3", ValueError, "is a section"),
    ("seed", ValueError, "key=value"),
])
def test_bad_overrides_name_the_key(override, error, pattern):
    with pytest.raises(error, match=pattern):
        load_config("configs/synthetic.py", [override])


def test_missing_config_file_lists_packaged_ones():
    with pytest.raises(FileNotFoundError, match="configs/synthetic.py"):
        load_config("configs/does_not_exist.py")
