"""Atomic writes: the file a run hands on gets a plain file's permissions, and a failed write leaves nothing."""

import json
import os
import stat

import pytest

from data_pipelines.files import give_default_mode, write_atomically, write_json_atomically


@pytest.fixture
def umask():
    """Sets the process umask for one test and restores it after."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_a_written_file_has_the_mode_open_would_give_it(tmp_path, umask, mask, expected):
    umask(mask)
    path = tmp_path / "sub" / "report.json"
    write_json_atomically(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert mode(path) == expected
    assert os.listdir(path.parent) == ["report.json"]  # no temp file left behind


def test_rewriting_a_private_file_gives_it_the_default_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "config.json"
    path.write_text("{}")
    path.chmod(0o600)
    write_json_atomically(path, [1])
    assert mode(path) == 0o644


def test_a_failing_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "DONE.json"
    write_json_atomically(path, {"old": True})

    def fail_halfway(file):
        file.write(b'{"new": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(path, fail_halfway)
    assert json.loads(path.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["DONE.json"]


def test_give_default_mode_leaves_the_umask_unchanged(tmp_path, umask):
    umask(0o027)
    directory = tmp_path / "bundle"
    directory.mkdir(mode=0o700)
    give_default_mode(directory, directory=True)
    assert mode(directory) == 0o750
    assert os.umask(0o027) == 0o027
