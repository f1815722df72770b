"""One copy of the champion's movie matrix for all backends of a server.

Each backend used to hold its own copy (10.7 MB at 27k movies x 100 dimensions, twice that
with a ranking head).  Two backends scoring at once then kept two copies in a 32 MB L3
cache beside the shared buffers, and a matrix-vector product read from DRAM at 0.8 ms
instead of 0.2 ms.  Here the first backend that loads a champion writes the arrays to files
in shared memory (tmpfs) and every backend maps them read-only: the page cache holds one
copy, so the CPU caches do too.

The files live in ``/dev/shm/movrec-<uid>/``, a directory of the server's OS user with mode
0700: /dev/shm is world-writable, and a file another local user planted must never be
mapped.  One backend builds a given name while the others watch for its files, so a deploy
does not make every backend write its own copy at once.  Where no tmpfs is usable, callers
get private arrays, as before.  Pure numpy and the file system, no plpy.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np

SHM_ROOT = Path(os.environ.get("MOVREC_SHM_DIR", "/dev/shm"))
PREFIX = "movrec-"


def private_dir(root: Path | None = None) -> Path | None:
    """``root/movrec-<uid>`` (root: ``SHM_ROOT``), created 0700; None unless it is ours and
    nobody else's."""
    path = (root or SHM_ROOT) / f"{PREFIX}{os.getuid()}"
    with contextlib.suppress(FileExistsError, OSError):
        path.mkdir(mode=0o700)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return path


def _load(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


BuilderLock = Callable[[], AbstractContextManager[bool]]
WAIT_S = 3.0  # how long a backend waits for another's build before building a private copy
KEEP_S = 600.0  # other names of a group younger than this survive a new build


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[bool]:
    """True when this process holds ``path``'s lock (until the block ends), False when
    another does; never waits."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def shared_arrays(
    name: str,
    parts: tuple[str, ...],
    build: Callable[[], dict[str, np.ndarray]],
    group: str,
    lock: BuilderLock | None = None,
) -> dict[str, np.ndarray]:
    """The arrays ``build()`` returns ({part: array}), each memory-mapped from
    ``movrec-<name>-<part>.npy`` in the private directory.

    ``build`` runs only when a part is missing, so a new backend maps the champion without
    fetching it from the registry.  ``name`` must start with ``group`` and change whenever
    the content would.  ``lock()`` says whether this process is the one builder (default: a
    file lock per group).  Nobody waits on it: the others watch for the builder's files for
    up to ``WAIT_S`` and otherwise build a private copy, so a builder stuck in a long
    transaction, or on a lock of the server's, can never hold them up for longer.  Writing a
    new name removes the group's files of other names written more than ``KEEP_S`` ago (an
    older champion of the same database); backends still mapping them keep their pages.
    """
    directory = private_dir()
    if directory is None:
        return build()

    def mapped() -> dict[str, np.ndarray] | None:
        try:
            return {part: _load(directory / f"{PREFIX}{name}-{part}.npy") for part in parts}
        except (OSError, ValueError):
            return None

    if (found := mapped()) is not None:
        return found
    built: dict[str, np.ndarray] | None = None
    try:
        with (lock or (lambda: file_lock(directory / f"{PREFIX}{group}.lock")))() as builder:
            if not builder:
                deadline = time.monotonic() + WAIT_S
                while time.monotonic() < deadline:
                    time.sleep(0.01)
                    if (found := mapped()) is not None:
                        return found
                return build()
            if (found := mapped()) is not None:
                return found
            built = build()
            for part, array in built.items():
                path = directory / f"{PREFIX}{name}-{part}.npy"
                tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
                try:
                    with open(tmp, "wb") as f:
                        np.save(f, np.ascontiguousarray(array))
                    os.replace(tmp, path)  # readers see the whole file or none
                finally:
                    tmp.unlink(missing_ok=True)
            _prune(directory, group, name)
            return mapped() or built
    except OSError:  # tmpfs full or gone: serve from private memory
        return built if built is not None else build()


def _prune(directory: Path, group: str, keep: str) -> None:
    """Remove the group's files of names other than ``keep`` written over KEEP_S ago.  (Not
    at once: a deploy builds the new champion's files before it commits, while the others
    still serve the old one.)"""
    cutoff = time.time() - KEEP_S
    for old in directory.glob(f"{PREFIX}{group}-*.npy"):
        if old.name.startswith(f"{PREFIX}{keep}-"):
            continue
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < cutoff:
                old.unlink()
