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


@pytest.fixture
def umask():
    """Sets the process umask for one test and restores it."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize(
    "mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)]
)
def test_written_files_get_the_modes_of_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    file_io.write_json_atomically(tmp_path / "a.json", {"x": 1})
    with file_io.atomic_output_path(tmp_path / "b.bin") as temp:
        with open(temp, "wb") as f:
            f.write(b"b")
    with file_io.atomic_output_directory(tmp_path / "d") as temp_dir:
        (temp_dir / "inner.txt").write_text("x")
    # What `open` would create under this umask, the reference.
    with open(tmp_path / "plain", "w"):
        pass
    assert os.stat(tmp_path / "plain").st_mode & 0o777 == file_mode
    for name in ("a.json", "b.bin"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == file_mode, name
    assert os.stat(tmp_path / "d").st_mode & 0o777 == dir_mode
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.bin", "d", "plain"]


def test_an_unwritable_directory_is_a_path_error_naming_it(tmp_path):
    from flan_jax.errors import PathError, UserError

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    for write in (
        lambda: file_io.write_text_atomically(blocker / "out.txt", "x"),
        lambda: file_io.check_writable(blocker / "sub" / "out.txt"),
    ):
        with pytest.raises(PathError, match=f"cannot write into {blocker}") as caught:
            write()
        assert isinstance(caught.value, UserError)
    assert blocker.read_text() == "not a directory"


def test_a_line_that_is_not_utf8_is_named_with_its_file_and_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=rf"{path}:3: not valid UTF-8 \(byte 0xe9 at column 11\)"):
        list(file_io.read_jsonl_objects(path))
    path.write_bytes(b"ok\nline two \xff\n")
    with pytest.raises(KeyError, match=rf"{path}:2: not valid UTF-8 \(byte 0xff at column 10\)"):
        file_io.read_text(path, error_type=KeyError)


def test_a_url_path_is_written_through_tensorflow_file_systems():
    import tensorflow as tf

    path = "ram://file_io_test/dir/data.json"
    file_io.write_json_atomically(path, {"a": [1, 2]})
    with tf.io.gfile.GFile(path) as f:
        assert json.load(f) == {"a": [1, 2]}
