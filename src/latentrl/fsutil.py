"""Files the commands write: the output-folder check made before any work, and atomic text writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class OutputDirError(ValueError):
    """An output folder that cannot be used: a file, under a file, or not writable."""


def check_output_dir(path: str | os.PathLike, what: str = "output_dir") -> None:
    """OutputDirError unless ``path`` is, or can be made, a writable folder (checked by writing a probe
    file in it or in its nearest existing parent, so read-only mounts are caught too)."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        if not parent.is_dir():
            where = "is a file" if parent == path else f"is under {parent}, which is a file"
            raise OutputDirError(f"{what} {path} {where}; choose a folder")
        try:
            with tempfile.TemporaryFile(dir=parent):
                pass
        except OSError as err:
            raise OutputDirError(f"{what} {path}: cannot write in {parent} ({err.strerror})") from None
        return


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
