"""bertfast._files: atomic writes keep the mode of a plain open(), leave no temporary file, and
read_json names a corrupt file."""
import os

import pytest

from bertfast._files import CorruptFileError, atomic_write, atomic_write_text, read_json


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_mode_of_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(str(tmp_path / "atomic.txt"), "x")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_model_files_get_the_mode_of_the_others(tmp_path):
    import torch
    from bertfast import BertConfig, BertModel
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                         vocab_size=20)).save_pretrained(str(tmp_path))
    with open(tmp_path / "other.txt", "w") as f:
        f.write("x")
    modes = {name: os.stat(tmp_path / name).st_mode & 0o777 for name in os.listdir(tmp_path)}
    assert set(modes) == {"config.json", "model.safetensors", "other.txt"} and len(set(modes.values())) == 1, modes


def test_no_temporary_file_left_on_failure(tmp_path):
    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        atomic_write(str(tmp_path / "a.txt"), fail)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        atomic_write_text(str(tmp_path), "x")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("content, problem", [(b"{\"a\": ", "not valid JSON"), (b"\xff", "not UTF-8"),
                                              (b"[1]", "expected a JSON dict, found list"),
                                              (b"[" * 100000, "not readable JSON")])
def test_read_json_names_a_corrupt_file(tmp_path, content, problem):
    (tmp_path / "f.json").write_bytes(content)
    with pytest.raises(CorruptFileError, match="f.json is corrupt: " + problem + ".*; do this"):
        read_json(str(tmp_path / "f.json"), "do this")
