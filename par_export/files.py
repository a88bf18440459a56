"""Writing outputs so that a failure never leaves a half-written file and nothing outside the
output folder is ever touched.

An output folder is written in a scratch folder beside it (``.NAME.tmp-*``) and renamed into
place at the end; a lock file beside it (``.NAME.lock``, ``flock``) keeps two writers apart
while it is written. Neither stays: a killed run's are removed by the next run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from par_export.errors import ParExportError

# Written into every output folder: ``--overwrite`` replaces only folders that hold it (or are empty).
# Nothing else proves ownership: a user's folder with a report.json or manifest.json of its own is not ours.
MARKER = ".par-export"


def check_out(path: str | Path, inputs: Iterable[str | Path] = (), sealed: Iterable[str | Path] = (),
              data: Iterable[str | Path] = ()) -> Path:
    """``path`` resolved, or :class:`ValueError` when it may not be an output folder: ``/``, the home
    folder, the current folder or one above it, a folder holding, equal to or inside one of ``inputs``
    (the model, export or artifact folders a command reads), holding or equal to one of ``data`` (the
    question files and image folders eval reads: results may go in a subfolder of those),
    a folder inside one of the ``sealed`` artifacts (it would break their seal), or an existing file."""
    raw = Path(path).expanduser()
    resolved = raw.resolve()
    # the last component unresolved: a symlink at --out is refused below, never followed
    target = raw.absolute().parent.resolve() / raw.name if raw.name not in ("", ".", "..") else resolved
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
        raise ParExportError(f"--out {path}: refusing to write over {resolved}; name a new folder for the output")
    if target == Path(target.anchor) or target == Path.home().resolve():
        raise ParExportError(f"--out {path}: refusing to write over {target}; name a new folder for the output")
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ParExportError(f"--out {path}: is the current folder or holds it; name a new folder for the output")
    inputs = list(inputs)
    for item in [*inputs, *data]:
        source = Path(item).expanduser().resolve()
        if source == resolved or resolved in source.parents:
            raise ParExportError(f"--out {path}: holds the input {item}; name a folder outside it")
        if item in inputs and source in resolved.parents:  # inputs are read, never written into
            raise ParExportError(f"--out {path}: is inside the input {item}; name a folder outside it")
    artifact = inside_any(resolved, sealed)
    if artifact is not None:
        raise ParExportError(f"--out {path}: is inside the artifact {artifact}, whose files are sealed; name a folder "
                         "outside it")
    if target.is_symlink():
        raise ParExportError(f"--out {path}: is a symbolic link; name a real folder")
    if target.exists() and not target.is_dir():
        raise ParExportError(f"--out {path}: is a file; name a folder")
    return target


def inside_any(path: str | Path, folders: Iterable[str | Path]) -> str | Path | None:
    """The first of ``folders`` that ``path`` lies inside (below, not equal), or ``None``."""
    resolved = Path(path).expanduser().resolve()
    return next((f for f in folders if Path(f).expanduser().resolve() in resolved.parents), None)


def is_ours(folder: Path) -> bool:
    """True for an empty folder or one par-export wrote (``--overwrite`` may replace only these)."""
    entries = list(folder.iterdir())
    return not entries or (folder / MARKER).is_file()


@contextlib.contextmanager
def output_lock(target: Path, error: type[Exception]) -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``target`` while writing it (``flock``: released if the process
    dies); a second writer fails at once with a clear message. The file is removed at the end;
    a writer that locked a removed file sees its inode gone and fails too (the usual pattern)."""
    lock_path = target.parent / f".{target.name}.lock"
    busy = f"{target}: another par-export process is writing it; wait for it to finish"
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise error(busy) from None
        try:
            current = os.stat(lock_path)
        except FileNotFoundError:
            current = None
        if current is None or current.st_ino != os.fstat(lock.fileno()).st_ino:
            raise error(busy)
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)  # before unlocking: see the docstring


def remove_stale_scratch(target: Path) -> None:
    """Remove ``.NAME.tmp-*`` folders beside ``target`` that a killed run left (call under the lock:
    no live writer owns them then)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


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
def atomic_folder(path: str | Path, overwrite: bool, error: type[Exception] = FileExistsError,
                  inputs: Iterable[str | Path] = (), sealed: Iterable[str | Path] = (),
                  data: Iterable[str | Path] = ()):
    """Yield ``(final, scratch)`` folders beside ``path``; on success ``final`` becomes ``path``.

    ``path`` is checked with :func:`check_out` against ``inputs``, ``sealed`` and ``data``. It must not exist unless
    ``overwrite``, and then only an empty folder or one par-export wrote is replaced. Writers
    to one ``path`` exclude each other (:func:`output_lock`). The final rename never deletes a
    folder that appeared meanwhile: it fails instead. On any failure neither a new ``path`` nor
    the scratch folders remain; the old ``path`` is kept.
    """
    try:
        target = check_out(path, inputs, sealed, data)
    except ValueError as err:
        raise error(str(err)) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(target, error):
        remove_stale_scratch(target)
        check_replaceable(target, overwrite, error)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            final = work / "final"
            final.mkdir()
            (final / MARKER).write_text(json.dumps({"written_by": "par-export"}) + "\n")
            yield final, work
            check_replaceable(target, overwrite, error)  # again: something may have appeared meanwhile
            if target.exists():
                target.rename(work / "old")  # out of the way first: a failed rename below keeps it
            try:
                final.rename(target)  # fails (ENOTEMPTY/EEXIST) if a folder appeared at target meanwhile
            except OSError as err:
                if (work / "old").exists() and not target.exists():
                    (work / "old").rename(target)
                raise error(f"{target}: could not be put in place ({err.strerror}); nothing was replaced") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)


def check_replaceable(target: Path, overwrite: bool, error: type[Exception]) -> None:
    """Refuse an existing ``target`` unless ``overwrite`` and it is ours (:func:`is_ours`)."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise error(f"{target}: exists and is not a folder; name a new folder for the output")
    if not overwrite:
        raise error(f"{target} exists; pass --overwrite to replace it")
    if not is_ours(target):
        raise error(f"{target}: --overwrite replaces only a folder par-export wrote (with {MARKER}) or an empty "
                    "one; this one holds other files")
