"""Output paths checked before a command computes anything: a folder that is one or can be made, an image file
name matplotlib writes, each in a place where files can be created. Each failure is a one-line ValueError."""
from __future__ import annotations

import tempfile
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def output_folder(path: Path, option: str = "--out") -> Path:
    """`path` as an output folder: an existing folder, or one that can be created, where files can be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file; it must be a folder (created if missing)")
    _check_creatable(path, path, option)
    return path


def output_image(path: Path, option: str = "--out") -> Path:
    """`path` as an image file to write: a suffix in IMAGE_SUFFIXES, not a folder, in a writable folder."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{option} {path} needs an image extension: one of {', '.join(IMAGE_SUFFIXES)}")
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give an image file name such as {path / 'grid.png'}")
    _check_creatable(path.parent, path, option)
    return path


def _check_creatable(folder: Path, path: Path, option: str) -> None:
    """Files can be made in `folder` (created if missing): its nearest existing ancestor is a writable folder."""
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir():
        raise ValueError(f"{option} {path} cannot be created: {existing} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise ValueError(f"{option} {path}: cannot write in {existing} ({error.strerror})") from None
