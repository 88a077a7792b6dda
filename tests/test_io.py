import os
import pickle
import stat

import matplotlib.pyplot as plt
import pytest
import torch

from cfgedu.core.io import atomic_savefig, atomic_write_json, atomic_write_text, first_sentence, safe_torch_load


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo payload ran",))


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = atomic_write_json({"a": 1}, tmp_path / "x.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "notes.md"
    atomic_write_text("a long first version\n" * 100, path)
    atomic_write_text("short\n", path)
    assert path.read_text() == "short\n"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.md"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = atomic_write_text("old", tmp_path / "a.txt")
    figure = plt.figure()
    with pytest.raises(ValueError):
        atomic_savefig(figure, tmp_path / "a.txt")  # matplotlib has no "txt" format
    plt.close(figure)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_savefig_writes_a_png(tmp_path):
    figure = plt.figure()
    path = atomic_savefig(figure, tmp_path / "f.png", dpi=20)
    plt.close(figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_zero_byte_checkpoint_gets_one_clear_line(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"checkpoint.pt is empty \(0 bytes\)"):
        safe_torch_load(path)


@pytest.mark.parametrize("write", [
    lambda path: path.write_bytes(pickle.dumps(_Payload())),
    lambda path: torch.save({"weights": torch.zeros(2), "extra": _Payload()}, path),
], ids=["plain pickle", "torch.save with an object"])
def test_a_pickled_object_is_refused_without_advice_to_unpickle_it(tmp_path, write, capfd, recwarn):
    path = tmp_path / "hostile.pt"
    write(path)
    with pytest.raises(ValueError) as error:
        safe_torch_load(path)
    message = str(error.value)
    assert message.startswith(f"{path} is not a weights-only checkpoint")
    assert "will not unpickle it" in message and "weights_only" not in message and "\n" not in message
    assert "payload ran" not in capfd.readouterr().out
    assert not [str(warning.message) for warning in recwarn]  # torch's own advice is not printed beside it


def test_a_corrupt_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip archive")
    with pytest.raises(ValueError, match="checkpoint.pt is not a readable cfgedu checkpoint"):
        safe_torch_load(path)


def test_first_sentence_cuts_at_a_sentence_or_a_word():
    assert first_sentence("One thing broke. Then advice follows.\nMore lines.") == "One thing broke."
    long = "word " * 80
    cut = first_sentence(long, limit=50)
    assert cut.endswith(" …") and len(cut) <= 52 and cut[:-2].split(" ") == ["word"] * len(cut[:-2].split(" "))
    assert first_sentence("") == ""
