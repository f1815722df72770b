"""A process that keeps one shared copy's sealed memfd open after the backends have gone.

``python3 -I shm_keeper.py DIR NAME FD PID START`` (started by ``movrec.shared``, never by
hand): holds memfd ``FD`` of copy ``NAME`` and records itself among its holders in ``DIR``,
so that a new backend maps that memfd instead of copying and checking the durable file.
Every pg_cron run and every new worker is a new backend: without a process that outlives
them, the first one after an idle spell copied and checked the whole copy (200 MB for the
CF index at 20M ratings) before its first answer.

It exits, within ``POLL_S``, when the process ``PID`` (the postmaster of the backend that
started it, whose start time in clock ticks is ``START``) has gone, or when the durable
copy ``DIR/movrec-NAME.bin`` has been removed (a newer copy of the group replaced it, or it
was damaged and rebuilt under a new name): so it lives no longer than the server, nor than
the copy it keeps.  It reads no file but those and ``/proc``, writes only its line in the
holders file, and never touches the database.  Standard library only: it runs outside the
backend's interpreter (``-I``, no site packages).
"""

from __future__ import annotations

import os
import signal
import sys
import time

POLL_S = 0.5
PREFIX = "movrec-"


def process_start(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), None if there is no PID."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after it
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def _detach() -> None:
    """Leave the backend's session and signal state: the postmaster's shutdown signals go
    to its own children only, and this process ends on its own once the postmaster is gone."""
    if os.fork() > 0:
        os._exit(0)  # the backend waits for this first child only, briefly
    os.setsid()
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    os.chdir("/")


def main(argv: list[str]) -> int:
    directory, name, fd, pid, start = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    durable = os.path.join(directory, f"{PREFIX}{name}.bin")
    _detach()
    entry = f"{os.getpid()} {fd}\n".encode()
    holders = os.open(
        os.path.join(directory, f"{PREFIX}{name}.holders"),
        os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
        0o600,
    )
    try:
        os.write(holders, entry)  # one small O_APPEND write: never interleaved with another's
    finally:
        os.close(holders)
    while process_start(pid) == start and os.path.exists(durable):
        time.sleep(POLL_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
