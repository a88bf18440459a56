"""Writing outputs so that a failure never leaves a half-written file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | Path, overwrite: bool, error: type[Exception] = FileExistsError):
    """Yield ``(final, scratch)`` folders beside ``path``; on success ``final`` replaces ``path``.

    ``path`` must not exist unless ``overwrite``; on any failure neither ``path`` nor the
    temporary folders remain.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise error(f"{target} exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        final = work / "final"
        final.mkdir()
        yield final, work
        if target.exists():
            shutil.rmtree(target)
        final.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
