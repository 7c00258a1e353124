"""The atomic writers: the target holds the old or the new contents, never a partial file."""

import json
import os

import numpy as np
import pytest

from flan_jax.data import file_io


class _WriteFailed(Exception):
    pass


def _fail_after_partial_write(f):
    f.write("partial")
    raise _WriteFailed


def test_json_and_text_round_trip_without_leftovers(tmp_path):
    path = tmp_path / "new" / "out.json"  # the folder is created
    data = {"b": [1, 2], "a": "café"}
    file_io.write_json_atomically(path, data)
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == data and list(json.loads(text)) == ["b", "a"]
    assert "café" in text and text.endswith("\n")
    file_io.write_json_atomically(path, data, indent=None)
    assert path.read_text(encoding="utf-8") == json.dumps(data, ensure_ascii=False) + "\n"
    file_io.write_text_atomically(tmp_path / "t.txt", "line\n")
    assert (tmp_path / "t.txt").read_text() == "line\n"
    assert sorted(os.listdir(tmp_path)) == ["new", "t.txt"]
    assert os.listdir(tmp_path / "new") == ["out.json"]


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "out.txt"
    file_io.write_text_atomically(path, "old")
    with pytest.raises(_WriteFailed):
        file_io.write_atomically(path, _fail_after_partial_write)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_binary_writer_and_output_path(tmp_path):
    arrays = {"x": np.arange(5), "y": np.eye(2)}
    file_io.write_atomically(tmp_path / "a.npz", lambda f: np.savez(f, **arrays), mode="wb")
    with np.load(tmp_path / "a.npz") as loaded:
        np.testing.assert_array_equal(loaded["y"], arrays["y"])
    with file_io.atomic_output_path(tmp_path / "b.bin") as temp_path:
        assert os.path.dirname(temp_path) == str(tmp_path)
        assert not (tmp_path / "b.bin").exists()  # nothing at the target until the end
        with open(temp_path, "wb") as f:
            f.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(_WriteFailed), file_io.atomic_output_path(tmp_path / "c.bin"):
        raise _WriteFailed
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.bin"]


def test_remove_temporary_files_removes_only_a_killed_writers_files(tmp_path):
    (tmp_path / ".tmp-abc.tmp").write_text("half")
    (tmp_path / "keep.tmp").write_text("not ours")
    (tmp_path / "data.json").write_text("{}")
    assert file_io.remove_temporary_files(tmp_path) == [".tmp-abc.tmp"]
    assert sorted(os.listdir(tmp_path)) == ["data.json", "keep.tmp"]


def test_output_directory_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(_WriteFailed), file_io.atomic_output_directory(target) as temp_dir:
        (temp_dir / "weights").write_text("half")
        raise _WriteFailed
    assert os.listdir(tmp_path) == []
    target.mkdir()  # an empty directory may be replaced
    with file_io.atomic_output_directory(target) as temp_dir:
        (temp_dir / "weights").write_text("all")
        assert not (target / "weights").exists()
    assert (target / "weights").read_text() == "all"
    assert os.listdir(tmp_path) == ["model"]
    with pytest.raises(FileExistsError, match="not an empty directory"):
        with file_io.atomic_output_directory(target):
            pass
