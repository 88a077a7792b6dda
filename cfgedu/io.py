"""Files: atomic writes and safe loads. Checkpoints are only ever read with torch.load(weights_only=True)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch


def _atomic_write(path: Path, write) -> Path:
    """Write through a temporary file in the same folder, then rename: a reader sees the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj, path: Path) -> Path:
    """torch.save(obj) to `path` atomically."""
    return _atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_json(obj, path: Path) -> Path:
    """Write obj as indented JSON to `path` atomically."""
    return _atomic_write(path, lambda handle: handle.write(json.dumps(obj, indent=2).encode()))


def safe_torch_load(path: Path, map_location="cpu"):
    """torch.load with weights_only=True, turning a missing or unreadable file into a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, wrong format: all the same to the user
        raise ValueError(f"{path} is not a readable cfgedu checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:200]})") from None
