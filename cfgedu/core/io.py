"""Files: atomic writes and safe loads. Checkpoints are only ever read with torch.load(weights_only=True).

Every file cfgedu writes goes through `atomic_write`: a temporary file in the same folder, flushed to disk
and renamed over the target, so a reader (or a run killed mid-write) sees the old file or the new one,
never a part. The new file gets the permissions a plain `open(path, "w")` would give (0666 minus the umask).
"""
from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call write(handle) on a temporary file beside `path`, then rename it to `path`: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(data: bytes, path: Path) -> Path:
    """Write bytes to `path` atomically."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(text: str, path: Path) -> Path:
    """Write UTF-8 text to `path` atomically."""
    return atomic_write_bytes(text.encode(), path)


def atomic_write_json(obj, path: Path) -> Path:
    """Write obj as indented JSON to `path` atomically."""
    return atomic_write_text(json.dumps(obj, indent=2), path)


def atomic_torch_save(obj, path: Path) -> Path:
    """torch.save(obj) to `path` atomically."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_savefig(figure, path: Path, **savefig_kwargs) -> Path:
    """figure.savefig to `path` atomically (the format comes from the path's suffix)."""
    path = Path(path)
    return atomic_write(path, lambda handle: figure.savefig(handle, format=path.suffix[1:], **savefig_kwargs))


def first_sentence(text: str, limit: int = 200) -> str:
    """The first sentence of a (library's) error message, cut at a word and marked with … past `limit`."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    sentence = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0]
    if len(sentence) <= limit:
        return sentence
    return sentence[:limit].rsplit(" ", 1)[0] + " …"


def _refused_global(message: str) -> str:
    """What a weights-only load refused, from torch's message: a global ("posix.system") or a pickle opcode."""
    found = re.search(r"GLOBAL ([\w.]+)|Unsupported operand (\d+)", message)
    if found is None:
        return ""
    return found.group(1) or f"pickle opcode {found.group(2)}"


def safe_torch_load(path: Path, map_location="cpu"):
    """torch.load with weights_only=True; a missing, empty, corrupt or non-weights-only file is a ValueError
    (FileNotFoundError when missing) of one line that names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a cfgedu checkpoint (an interrupted copy?)")
    try:
        with warnings.catch_warnings():  # torch's advice on legacy pickles is not for cfgedu's users
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise ValueError(f"{path} is not a readable cfgedu checkpoint ({first_sentence(error)})") from None
        refused = _refused_global(str(error))
        raise ValueError(f"{path} is not a weights-only checkpoint: it holds Python objects other than tensors and "
                         f"plain containers{f' ({refused})' if refused else ''}, and cfgedu will not unpickle it"
                         ) from None
    except Exception as error:  # truncated zip, foreign format: all the same to the user
        detail = first_sentence(error) or "the file ends early"
        raise ValueError(f"{path} is not a readable cfgedu checkpoint: truncated, corrupt or not written by torch.save "
                         f"({type(error).__name__}: {detail})") from None
