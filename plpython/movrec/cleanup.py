"""What removing movrec from a database removes outside its schemas: its shared files (the
serving matrices and the CF ratings index).

movrec.serving.caches names this database's files in the server's private shm directory
(movrec.shared) ``movrec-<system identifier>-<database oid>-...`` (and the group's lock file
``movrec-<system identifier>-<database oid>.lock``): the cluster and the database, so other
clusters of the same OS user and other databases of this cluster keep theirs.  The CF index
(movrec.cf.cache) is ``movrec-cf-<system identifier>-<database oid>-...``.
"""

from __future__ import annotations

import contextlib
import os
import stat

from movrec import backend, shared
from movrec.serving.caches import DATABASE_SQL


def remove_shared_files() -> int:
    """Delete this database's files from the shm directory; returns how many were removed.

    Backends that still map one keep their pages (an unlinked file lives on while mapped);
    their next call finds no champion or builds afresh.  The directory is not created, and
    nothing is touched unless it is a real directory of this OS user.
    """
    directory = shared.SHM_ROOT / f"{shared.PREFIX}{os.getuid()}"
    try:
        st = os.lstat(directory)
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return 0
    group = backend.execute(DATABASE_SQL)[0]["name"]
    ours = [
        *directory.glob(f"{shared.PREFIX}{group}-*"),
        directory / f"{shared.PREFIX}{group}.lock",
        # the CF ratings index (movrec.cf.cache): its group starts cf-<system id>-<oid>-
        *directory.glob(f"{shared.PREFIX}cf-{group}-*"),
    ]
    removed = 0
    for path in ours:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed
