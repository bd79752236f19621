"""DFEW, one official fold, at the paper's sizes: 7 in-the-wild expressions, 16 frames, no identity labels.

Usage: ``--config configs/dfew.py:fold1`` (112 px) or ``configs/dfew.py:fold3,224``. Prepare the fold
first from your own download: ``ppfer-jax prepare dfew --manual_dir PATH --fold 1`` (add
``--one_random_frame`` for the single-frame set that pre-trains the expression controller C_fc).
DFEW has no identities, so only the expression side applies here (C_fc, F_u); the PPFER method
itself runs on CREMA-D (``configs/cremad.py``), which reads DFEW as its ``wild`` set. Models and
schedules are CREMA-D's.
"""

import ml_collections

from configs.cremad import get_config as cremad_config

FOLDS = (1, 2, 3, 4, 5)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    fold, image_size = _parse(arg or "fold1")
    c = cremad_config(str(image_size))
    c.data = ml_collections.ConfigDict()
    c.data.name = "dfew"
    c.data.data_dir = "~/tensorflow_datasets"  # where `ppfer-jax prepare dfew` wrote the TFDS set
    c.data.fold = fold  # official 5-fold protocol: EmoLabel_DataSplit/{train,test}(single-labeled)/set_<fold>.csv
    c.data.tfds_name = f"dfew/fold{fold}-{image_size}"
    c.data.frame_tfds_name = f"dfew/fold{fold}-{image_size}-frame"  # one random frame per clip (C_fc)
    c.data.num_identities = 0  # DFEW has no identity labels
    c.data.num_expressions = 7  # happy, sad, neutral, angry, surprise, disgust, fear (label 1..7 in the csvs)
    c.data.val_fraction = 0.05  # of the fold's train clips, held out for monitoring (see configs/cremad.py)
    c.data.num_frames = 16  # the paper's code samples 16 frames with stride n // 16
    c.data.image_size = image_size
    return c


def _parse(arg: str) -> tuple[int, int]:
    """``fold<k>`` or ``fold<k>,<image size>``."""
    fold, _, size = arg.partition(",")
    if fold not in {f"fold{k}" for k in FOLDS} or size not in ("", "112", "224"):
        raise ValueError(f"configs/dfew.py takes 'fold1'..'fold5', optionally ',112' or ',224', got {arg!r}")
    return int(fold.removeprefix("fold")), int(size or 112)
