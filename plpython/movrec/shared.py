"""One copy of the champion's movie matrix for all backends of a server, that no damaged
file can crash or mislead.

Each backend used to hold its own copy (10.7 MB at 27k movies x 100 dimensions, twice that
with a ranking head).  Two backends scoring at once then kept two copies in a 32 MB L3
cache beside the shared buffers, and a matrix-vector product read from DRAM at 0.8 ms
instead of 0.2 ms.  Here the backends of a server share one copy in memory.

What is shared is a *sealed memfd*, never a file: a file on tmpfs that a backend maps can be
truncated under it (the next read of a lost page is a SIGBUS, the backend dies and the
postmaster restarts the whole cluster) or overwritten in place (every backend then serves
the new bytes, with no error).  A memfd sealed against shrinking, growing and writing cannot
change for as long as anyone holds it, whoever tries (root included), so mapping it is safe.
Three layers, each checked before use:

* the memfds: the first backend to open a name copies the arrays into one, seals it, maps
  it read-only and records ``<pid> <fd>`` in ``movrec-<name>.holders``; later backends open
  a holder's memfd through ``/proc/<pid>/fd/<fd>`` (same OS user) after checking that it
  is a movrec memfd (its link name), sealed, of the size and name its header states;
* a keeper (``shm_keeper``): a small process, started when a copy is built or read from
  its durable file because no holder was alive, that holds the memfd until the postmaster
  exits or the durable file is removed, so a backend started after all others have gone
  (a pg_cron run after an idle spell) still maps a memfd instead of copying the file;
* the durable copy ``movrec-<name>.bin`` that outlives the backends: written under a
  private temporary name, fsync'd, made read-only and renamed into place, never modified;
  read (not mapped) into a new memfd only after its length and CRC-32 match its header;
* the registry (``build``): whenever neither gives a verified copy, the arrays are rebuilt
  from the database and the durable copy is written anew.

The files live in ``/dev/shm/movrec-<uid>/``, a directory of the server's OS user with mode
0700: /dev/shm is world-writable, and a file another local user planted must never be read.
One backend builds a given name while the others watch for it, so a deploy does not make
every backend write its own copy at once.  Where no tmpfs or no memfd is usable, callers get
private arrays; where ``/proc/<pid>/fd`` of another backend cannot be opened (a server made
non-dumpable), each backend reads the durable copy into a sealed memfd of its own: correct,
only not shared.  Pure numpy and the file system, no plpy.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import stat
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from movrec import shm_keeper

SHM_ROOT = Path(os.environ.get("MOVREC_SHM_DIR", "/dev/shm"))
PREFIX = "movrec-"
MAGIC = b"MOVREC\x00\x03"  # the container layout; a file of another layout is never read
ALIGN = 64
SEALS = (
    getattr(fcntl, "F_SEAL_SEAL", 1)
    | getattr(fcntl, "F_SEAL_SHRINK", 2)
    | getattr(fcntl, "F_SEAL_GROW", 4)
    | getattr(fcntl, "F_SEAL_WRITE", 8)
)
HOLDERS_MAX_BYTES = 4096  # a longer holders file is replaced by this process's entry alone
HOLDERS_TRIED = 8  # newest entries tried before the durable copy

# The process whose life bounds a keeper (shm_keeper): the postmaster, set by
# backend.activate() in a server backend; None elsewhere (the CLI's own long-lived process
# holds its copies itself), and then no keeper is started.
keeper_parent: int | None = None

# name -> the fd of the memfd this process holds for it (so others can open it; the arrays
# keep their mapping themselves).  Only the latest name of a group stays open.
_held: dict[str, int] = {}


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


# --- the container: MAGIC, header length (u64 LE), JSON header, aligned payload ----------


def pack(name: str, arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes of a container holding ``arrays`` under ``name``, with the payload's length
    and CRC-32 in its header."""
    parts, chunks, offset = [], [], 0
    for part, array in arrays.items():
        a = np.ascontiguousarray(array)
        pad = -offset % ALIGN
        chunks.append(b"\0" * pad)
        offset += pad
        parts.append([part, a.dtype.str, list(a.shape), offset, a.nbytes])
        chunks.append(a.tobytes())
        offset += a.nbytes
    payload = b"".join(chunks)
    header = json.dumps(
        {"name": name, "parts": parts, "size": len(payload), "crc32": zlib.crc32(payload)}
    ).encode()
    head = MAGIC + struct.pack("<Q", len(header)) + header
    return head + b"\0" * (-len(head) % ALIGN) + payload


def _header(buf: Any, name: str) -> tuple[dict[str, Any], int] | None:
    """The header and the payload's offset, if ``buf`` is a whole container of ``name``."""
    try:
        if bytes(buf[: len(MAGIC)]) != MAGIC:
            return None
        (n,) = struct.unpack("<Q", bytes(buf[len(MAGIC) : len(MAGIC) + 8]))
        start = len(MAGIC) + 8
        if n > 1 << 20 or start + n > len(buf):
            return None
        header = json.loads(bytes(buf[start : start + n]))
        base = start + n + (-(start + n) % ALIGN)
        if header.get("name") != name or base + int(header["size"]) != len(buf):
            return None
        for _, _, shape, offset, nbytes in header["parts"]:
            if offset < 0 or offset + nbytes > header["size"] or nbytes < 0:
                return None
            if int(np.prod(shape, dtype=np.int64)) < 0:
                return None
        return header, base
    except (ValueError, KeyError, TypeError, struct.error):
        return None


def unpack(buf: Any, name: str, parts: tuple[str, ...], verify: bool) -> dict[str, np.ndarray]:
    """The arrays of a container of ``name`` (views into ``buf``); ValueError unless it is
    whole, of that name, has every part and (``verify``) its payload matches its CRC-32."""
    found = _header(buf, name)
    if found is None:
        raise ValueError(f"not a whole container of {name}")
    header, base = found
    view = memoryview(buf)[base:]
    if verify and zlib.crc32(view) != header["crc32"]:
        raise ValueError(f"checksum of {name} does not match")
    out: dict[str, np.ndarray] = {}
    for part, dtype, shape, offset, nbytes in header["parts"]:
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dt.itemsize != nbytes:
            raise ValueError(f"part {part} of {name} has the wrong size")
        a = np.frombuffer(view, dtype=dt, count=count, offset=offset).reshape(shape)
        a.flags.writeable = False
        out[part] = a
    if set(parts) - set(out):
        raise ValueError(f"container {name} lacks parts {sorted(set(parts) - set(out))}")
    return {part: out[part] for part in parts}


# --- memfds -----------------------------------------------------------------------------


def _sealed_memfd(name: str, data: bytes) -> int:
    """A new memfd holding ``data``, sealed so that nobody can change it."""
    fd = os.memfd_create(f"{PREFIX}{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view, done = memoryview(data), 0
        while done < len(data):
            done += os.write(fd, view[done:])
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _map(fd: int) -> mmap.mmap:
    size = os.fstat(fd).st_size
    return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)


def _hold(directory: Path, name: str, group: str, fd: int) -> None:
    """Keep ``fd`` open for others and record this process as one of ``name``'s holders;
    let go of this process's memfds of the group's other names."""
    for other in [n for n in _held if n != name and n.startswith(f"{group}-")]:
        with contextlib.suppress(OSError):
            os.close(_held.pop(other))
    old = _held.pop(name, None)
    if old is not None and old != fd:
        with contextlib.suppress(OSError):
            os.close(old)
    _held[name] = fd
    path = directory / f"{PREFIX}{name}.holders"
    entry = f"{os.getpid()} {fd}\n".encode()
    with contextlib.suppress(OSError):
        if path.exists() and path.stat().st_size > HOLDERS_MAX_BYTES:
            _write_replacing(path, entry)
            return
        f = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(f, entry)  # one small O_APPEND write: never interleaved with another's
        finally:
            os.close(f)


def _from_holders(
    directory: Path, name: str, parts: tuple[str, ...]
) -> tuple[int, dict[str, np.ndarray]] | None:
    """A verified mapping of a live holder's memfd of ``name``, and this process's fd of it."""
    try:
        lines = (directory / f"{PREFIX}{name}.holders").read_bytes().decode("ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in reversed(lines[-HOLDERS_TRIED:]):
        try:
            pid, num = (int(x) for x in line.split())
            proc = f"/proc/{pid}/fd/{num}"
            # the link name first: never open another process's socket, pipe or data file
            if not os.readlink(proc).startswith(f"/memfd:{PREFIX}{name} "):
                continue
            fd = os.open(proc, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, ValueError):
            continue
        try:
            if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS != SEALS:
                raise ValueError("not sealed")
            # Sealed: nobody could have changed it since the holder verified what it wrote,
            # so the header (name, parts, sizes) is checked, not every byte again.
            return fd, unpack(_map(fd), name, parts, verify=False)
        except (OSError, ValueError):
            os.close(fd)
    return None


def _from_file(
    directory: Path, name: str, parts: tuple[str, ...]
) -> tuple[int, dict[str, np.ndarray]] | None:
    """The durable copy copied (never mapped: it could shrink) into a new memfd by the kernel,
    sealed, and served only once the sealed bytes match their header's length and CRC-32:
    what is verified is exactly what is served, and no private copy is made (200 MB under
    load: 1.1-1.5 s read into Python, checked and copied again; 0.93-0.98 s this way)."""
    try:
        src = os.open(directory / f"{PREFIX}{name}.bin", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    fd = -1
    try:
        fd = os.memfd_create(f"{PREFIX}{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        size = os.fstat(src).st_size
        done = 0
        while done < size:
            sent = os.sendfile(fd, src, done, size - done)
            if sent == 0:  # shrank meanwhile: the length check below refuses it
                break
            done += sent
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        arrays = unpack(_map(fd), name, parts, verify=True)
        return fd, arrays
    except (OSError, ValueError):
        if fd >= 0:
            os.close(fd)
        return None
    finally:
        os.close(src)


def _attach(
    directory: Path, name: str, parts: tuple[str, ...], group: str
) -> dict[str, np.ndarray] | None:
    found = _from_holders(directory, name, parts)
    if found is None and (found := _from_file(directory, name, parts)) is not None:
        # nobody held it: a keeper keeps it for the next backend after this one has gone
        _start_keeper(directory, name, found[0])
    if found is None:
        return None
    fd, arrays = found
    _hold(directory, name, group, fd)
    return arrays


def _python() -> str | None:
    """A Python interpreter to run the keeper with (a backend's sys.executable is postgres)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (
        sys.executable if os.path.basename(sys.executable or "").startswith("python") else "",
        os.path.join(sys.base_exec_prefix, "bin", version),
        os.path.join(sys.base_exec_prefix, "bin", "python3"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _start_keeper(directory: Path, name: str, fd: int) -> None:
    """Start a shm_keeper holding ``fd`` (memfd of ``name``) for as long as the server and the
    durable copy live; nothing where there is no server (``keeper_parent``) or no
    interpreter.  The keeper detaches at once, so this waits only for its first fork
    (about 30 ms): callers are the builders and the backend that copied the durable file,
    which have just spent far longer."""
    parent = keeper_parent
    start = shm_keeper.process_start(parent) if parent is not None else None
    python = _python()
    if parent is None or start is None or python is None:
        return
    args = [python, "-I", shm_keeper.__file__, str(directory), name, str(fd), str(parent)]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [*args, str(start)],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )


def _write_replacing(path: Path, data: bytes) -> None:
    """Write ``path`` whole: a private temporary name, fsync'd, read-only, renamed into place,
    so that readers see the old file or the new one and nothing is ever modified in place."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o400)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def shared_arrays(
    name: str,
    parts: tuple[str, ...],
    build: Callable[[], dict[str, np.ndarray]],
    group: str,
    lock: BuilderLock | None = None,
) -> dict[str, np.ndarray]:
    """The arrays ``build()`` returns ({part: array}), read-only, mapped from the sealed
    memfd all backends of the server share (see the module docstring).

    ``build`` runs only when no verified copy exists, so a new backend maps the champion
    without fetching it from the registry.  ``name`` must start with ``group`` and change
    whenever the content would.  ``lock()`` says whether this process is the one builder
    (default: a file lock per group).  Nobody waits on it: the others watch for the builder's
    copy for up to ``WAIT_S`` and otherwise build a private copy, so a builder stuck in a long
    transaction, or on a lock of the server's, can never hold them up for longer.  Writing a
    new name removes the group's files of other names written more than ``KEEP_S`` ago (an
    older champion of the same database); backends still holding them keep their memfds.
    """
    directory = private_dir()
    if directory is None or not hasattr(os, "memfd_create"):
        return build()
    if (found := _attach(directory, name, parts, group)) is not None:
        return found
    built: dict[str, np.ndarray] | None = None
    try:
        with (lock or (lambda: file_lock(directory / f"{PREFIX}{group}.lock")))() as builder:
            if not builder:
                deadline = time.monotonic() + WAIT_S
                while time.monotonic() < deadline:
                    time.sleep(0.01)
                    if (found := _attach(directory, name, parts, group)) is not None:
                        return found
                return build()
            if (found := _attach(directory, name, parts, group)) is not None:
                return found
            built = build()
            data = pack(name, built)
            _write_replacing(directory / f"{PREFIX}{name}.bin", data)
            # a holders file left by damage or by processes long gone starts afresh
            (directory / f"{PREFIX}{name}.holders").unlink(missing_ok=True)
            _prune(directory, group, name)
            return _attach(directory, name, parts, group) or built
    except OSError:  # tmpfs full or gone: serve from private memory
        return built if built is not None else build()


# --- a group whose content changes without a key: a pointer to the current name --------


def _current_path(directory: Path, group: str) -> Path:
    return directory / f"{PREFIX}{group}.current"


def publish(group: str, name: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Share ``arrays`` under ``name`` and make it the group's current name (see
    ``attach_current``); the mapped arrays, or None where nothing could be shared (no
    tmpfs or memfd, tmpfs full, or another process publishing the group right now).

    For content that no key names in advance (the CF ratings, which change with every
    rating): each publish takes a new ``name`` (starting with ``group``), and the pointer
    file ``movrec-<group>.current`` is replaced whole to name it.  The group's files of
    other names are removed at once: whoever still maps them keeps their memfd, and a
    reader that lost the race finds nothing and builds afresh."""
    directory = private_dir()
    if directory is None or not hasattr(os, "memfd_create") or not name.startswith(f"{group}-"):
        return None
    try:
        with file_lock(directory / f"{PREFIX}{group}.lock") as builder:
            if not builder:
                return None
            data = pack(name, arrays)
            fd = _sealed_memfd(name, data)
            try:
                _write_replacing(directory / f"{PREFIX}{name}.bin", data)
                del data
                mapped = unpack(_map(fd), name, tuple(arrays), verify=False)
            except BaseException:
                os.close(fd)
                raise
            (directory / f"{PREFIX}{name}.holders").unlink(missing_ok=True)
            _hold(directory, name, group, fd)
            _start_keeper(directory, name, fd)
            _write_replacing(_current_path(directory, group), name.encode("ascii"))
            _prune(directory, group, name, keep_s=0.0)
            return mapped
    except (OSError, ValueError):
        return None


def attach_current(group: str, parts: tuple[str, ...]) -> tuple[str, dict[str, np.ndarray]] | None:
    """The group's current name and its arrays, mapped from a live holder's sealed memfd or
    from the durable copy once its length and CRC-32 match; None when there is none or it
    cannot be verified (a truncated, overwritten or replaced file is never served).  Any
    verified container of the group may be returned (a pointer replaced by an older name):
    callers store in the arrays what they need to bring them up to date."""
    directory = private_dir()
    if directory is None or not hasattr(os, "memfd_create"):
        return None
    try:
        raw = _current_path(directory, group).read_bytes()
        name = raw.decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    if (
        len(raw) > 255
        or not name.startswith(f"{group}-")
        or not all(c.isalnum() or c in "-_." for c in name)
    ):
        return None
    try:
        arrays = _attach(directory, name, parts, group)
    except OSError:
        return None
    return None if arrays is None else (name, arrays)


def shares(array: np.ndarray) -> bool:
    """Whether ``array`` is a view of a shared (mapped) copy rather than private memory."""
    base: Any = array
    while isinstance(base, np.ndarray | memoryview):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    return isinstance(base, mmap.mmap)


def _prune(directory: Path, group: str, keep: str, keep_s: float | None = None) -> None:
    """Remove the group's files of names other than ``keep`` written over ``keep_s`` (default
    KEEP_S, read at the call) ago.  (Not
    at once: a deploy builds the new champion's copy before it commits, while the others
    still serve the old one.)  Files of older layouts (``.npy``) go the same way."""
    cutoff = time.time() - (KEEP_S if keep_s is None else keep_s)
    for old in directory.glob(f"{PREFIX}{group}-*"):
        if old.name.startswith(f"{PREFIX}{keep}.") or old.name.endswith(".tmp"):
            continue
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < cutoff:
                old.unlink()
