"""The embedded PostgreSQL cluster: private data dir, own port and socket.

``initdb`` and ``postgres`` refuse to run as root, so under root everything runs
as the ``postgres`` OS user, in a directory that user can reach.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from movrec_cli.errors import CliError

DEFAULT_PORT = 54329
SHM_DIR = "/dev/shm"  # where backends share champion matrices (movrec.shared)
DATABASE = "movrec"
SUPERUSER = "postgres"

SERVER_CONF = """
# movrec embedded cluster
port = {port}
listen_addresses = ''
unix_socket_directories = '{socket_dir}'
max_connections = 50
shared_buffers = 256MB
# every rating writes the ratings, the user's vector and its archive: spacing checkpoints
# out and compressing full-page images cuts the WAL each insert costs
max_wal_size = 4GB
checkpoint_timeout = 15min
wal_compression = lz4
shared_preload_libraries = '{preload}'
cron.database_name = '{database}'
cron.host = '{socket_dir}'
logging_collector = off
"""


# Local connections authenticate by peer: the server's OS user and root (who can read the
# data directory anyway) are the superuser; every other role logs in with a password.
# The socket directory is 0700, so no other OS user reaches the socket at all.  Replication
# (a local standby's pg_basebackup and WAL receiver) is the superuser's, by peer too.
HBA_CONF = """# movrec embedded cluster (rewritten by `movrec db up`)
local   all           {superuser}   peer map=movrec
local   replication   {superuser}   peer map=movrec
local   all           all           scram-sha-256
host    all           all   127.0.0.1/32   scram-sha-256
host    all           all   ::1/128        scram-sha-256
"""
IDENT_CONF = """# movrec embedded cluster (rewritten by `movrec db up`): OS user -> database user
movrec   {server_user}   {superuser}
movrec   root            {superuser}
"""


def bindir() -> Path:
    """Newest PostgreSQL server binaries (MOVREC_PG_BINDIR overrides)."""
    if env := os.environ.get("MOVREC_PG_BINDIR"):
        return Path(env)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise CliError("no PostgreSQL server binaries under /usr/lib/postgresql: run `make setup`")
    return found[-1].parent


def _as_server_user() -> list[str]:
    return ["runuser", "-u", SUPERUSER, "--"] if os.geteuid() == 0 else []


def _reachable_by_server_user(path: Path) -> bool:
    if os.geteuid() != 0:
        return True
    return (
        subprocess.run([*_as_server_user(), "test", "-x", str(path)], check=False).returncode == 0
    )


def default_home() -> Path:
    """MOVREC_HOME, else ./.movrec; under root, a dir postgres can reach if ./ is not."""
    if env := os.environ.get("MOVREC_HOME"):
        return Path(env).resolve()
    local = Path.cwd() / ".movrec"
    if local.is_symlink() or _reachable_by_server_user(Path.cwd()):
        return local.resolve()
    target = (
        Path("/var/lib/movrec") / hashlib.md5(str(Path.cwd()).encode()).hexdigest()[:10] / "cluster"
    )
    target.mkdir(parents=True, exist_ok=True)
    local.symlink_to(target)
    return target


def ensure_database(admin_dsn: str, name: str) -> None:
    """Create the database if it is missing (never drops: DROP DATABASE waits for every
    backend of the cluster, and one busy training in PL/Python does not answer soon)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


# What a Citus node sets over SERVER_CONF: Citus loads first (it must), nodes reach each other
# over their sockets (peer authentication, no TCP), and the connections between nodes count
# against max_connections.
CITUS_CONF = """
# movrec Citus node
max_connections = 100
citus.node_conninfo = 'sslmode=disable'
"""


@dataclass
class Cluster:
    home: Path
    port: int = DEFAULT_PORT
    citus: bool = False  # a Citus node: shared_preload_libraries starts with citus

    @classmethod
    def default(cls) -> Cluster:
        return cls(default_home(), int(os.environ.get("MOVREC_PORT", DEFAULT_PORT)))

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "run"

    @property
    def logfile(self) -> Path:
        return self.home / "postgres.log"

    def dsn(self, dbname: str = DATABASE) -> str:
        return f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname={dbname}"

    def _run(self, *args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
        cmd = [*_as_server_user(), *args]
        return subprocess.run(cmd, check=False, text=True, capture_output=capture)

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam(SUPERUSER)
            shutil.chown(path, pw.pw_uid, pw.pw_gid)

    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def init(self) -> bool:
        """initdb once; returns False when the cluster already exists."""
        if self.initialized():
            return False
        for d in (self.home, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            self._chown(d)
        if not _reachable_by_server_user(self.home):
            raise CliError(
                f"the {SUPERUSER} OS user cannot reach {self.home}: set MOVREC_HOME to a "
                "directory it can read (a checkout under /root is not)"
            )
        r = self._run(
            str(bindir() / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            capture=True,
        )
        if r.returncode != 0:
            raise CliError(f"initdb failed:\n{r.stdout}{r.stderr}")
        conf = SERVER_CONF.format(
            port=self.port,
            socket_dir=self.socket_dir,
            database=DATABASE,
            preload="citus,pg_cron" if self.citus else "pg_cron",
        )
        if self.citus:
            conf += CITUS_CONF
        with open(self.data / "postgresql.auto.conf", "a", encoding="utf-8") as f:
            f.write(conf)
        self.secure()
        return True

    def secure(self) -> None:
        """Peer authentication and a 0700 socket directory; also mends a cluster that an
        older movrec made with trust for every local OS user."""
        server_user = pwd.getpwuid(self.data.stat().st_uid).pw_name
        files = {
            "pg_hba.conf": HBA_CONF.format(superuser=SUPERUSER),
            "pg_ident.conf": IDENT_CONF.format(server_user=server_user, superuser=SUPERUSER),
        }
        for name, text in files.items():
            path = self.data / name
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
                self._chown(path)
                path.chmod(0o600)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.socket_dir)
        self.socket_dir.chmod(0o700)

    def running(self) -> bool:
        if not self.initialized():
            return False
        return (
            self._run(
                str(bindir() / "pg_ctl"), "-D", str(self.data), "status", capture=True
            ).returncode
            == 0
        )

    def start(self) -> None:
        if self.running():
            return
        self._start_server("PostgreSQL")
        self.ensure_database(DATABASE)

    def _start_server(self, what: str) -> None:
        """pg_ctl start, secured first; ``what`` names the server in the error."""
        self.secure()
        if not self.logfile.exists():
            self.logfile.touch()
            self._chown(self.logfile)
        r = self._run(
            str(bindir() / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            "60",
            "start",
            capture=True,
        )
        if r.returncode != 0:
            tail = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            raise CliError(f"{what} did not start (port {self.port} taken?):\n{r.stderr}{tail}")

    def ensure_database(self, name: str) -> None:
        ensure_database(self.dsn("postgres"), name)

    def stop(self) -> bool:
        if not self.running():
            return False
        self._run(
            str(bindir() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", capture=True
        )
        self.forget_shared_matrices()
        return True

    def forget_shared_matrices(self) -> int:
        """Remove the champion matrices and CF indexes this cluster's backends shared in
        /dev/shm/movrec-<uid>/ (plpython/movrec/shared.py); returns files removed."""
        out = self._run(str(bindir() / "pg_controldata"), "-D", str(self.data), capture=True)
        ids = [
            line.split(":", 1)[1].strip()
            for line in out.stdout.splitlines()
            if line.startswith("Database system identifier")
        ]
        removed = 0
        shm = Path(SHM_DIR)
        # (also the flat files of releases before the private directory)
        paths = (
            [
                *shm.glob(f"movrec-*/movrec-{ids[0]}-*"),
                *shm.glob(f"movrec-*/movrec-cf-{ids[0]}-*"),  # the CF ratings index
                *shm.glob(f"movrec-{ids[0]}-*.npy"),
            ]
            if ids
            else []
        )
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
        return removed


# What a local standby sets over the primary's settings (pg_basebackup copies those):
# its own port and socket, read queries while it replays, and feedback so that the
# primary's vacuum keeps the rows a standby query still reads (no replay conflicts).
STANDBY_CONF = """
# movrec local hot standby (written by `movrec db standby up`)
port = {port}
unix_socket_directories = '{socket_dir}'
hot_standby = on
hot_standby_feedback = on
"""


@dataclass
class Standby(Cluster):
    """A local streaming hot standby of an embedded cluster, for tests and demos: a copy made
    by ``pg_basebackup -R`` (the superuser over the primary's socket), in ``<home>/data``,
    on its own port and 0700 socket directory.  It replays the primary's WAL and answers
    read queries; movrec's writing calls refuse there (movrec._require_primary)."""

    primary: Cluster | None = None

    @classmethod
    def of(cls, primary: Cluster, port: int | None = None) -> Standby:
        """The standby of ``primary``: in ``<primary home>/standby``, on the next port
        (MOVREC_STANDBY_PORT overrides)."""
        if port is None:
            port = int(os.environ.get("MOVREC_STANDBY_PORT", primary.port + 1))
        return cls(primary.home / "standby", port, primary=primary)

    def init(self) -> bool:
        """Make the copy once (the primary must run); returns False when it exists."""
        if self.initialized():
            return False
        if self.primary is None or not self.primary.running():
            raise CliError("the primary is not running: start it first (`movrec db up`)")
        self.primary.secure()  # the replication line of pg_hba.conf
        self._run(str(bindir() / "pg_ctl"), "-D", str(self.primary.data), "reload", capture=True)
        for d in (self.home, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            self._chown(d)
        r = self._run(
            str(bindir() / "pg_basebackup"),
            "-D",
            str(self.data),
            "-h",
            str(self.primary.socket_dir),
            "-p",
            str(self.primary.port),
            "-U",
            SUPERUSER,
            "--checkpoint=fast",
            "--wal-method=stream",
            "--write-recovery-conf",
            "--no-password",
            capture=True,
        )
        if r.returncode != 0:
            shutil.rmtree(self.data, ignore_errors=True)
            raise CliError(f"pg_basebackup from port {self.primary.port} failed:\n{r.stderr}")
        conf = STANDBY_CONF.format(port=self.port, socket_dir=self.socket_dir)
        with open(self.data / "postgresql.auto.conf", "a", encoding="utf-8") as f:
            f.write(conf)
        self.secure()
        return True

    def start(self) -> None:
        """Start it (no CREATE DATABASE: a standby has the primary's databases)."""
        if self.running():
            return
        self._start_server("the standby")

    def stop(self) -> bool:
        """Stop it.  The champion matrices in /dev/shm stay: a copy has the primary's system
        identifier, so those files are the primary's too (its own stop removes them)."""
        if not self.running():
            return False
        self._run(
            str(bindir() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", capture=True
        )
        return True

    def remove(self) -> bool:
        """Stop it and delete its copy; returns False when there was none."""
        self.stop()
        if not self.home.exists():
            return False
        shutil.rmtree(self.home)
        return True

    def replay_lag_bytes(self) -> int | None:
        """How far replay trails the primary's current WAL position (bytes); None when it
        does not stream."""
        if self.primary is None:
            return None
        with psycopg.connect(self.primary.dsn("postgres"), autocommit=True) as conn:
            row = conn.execute(
                "SELECT (pg_current_wal_lsn() - replay_lsn)::bigint FROM pg_stat_replication "
                "WHERE application_name = 'walreceiver' ORDER BY replay_lsn DESC LIMIT 1"
            ).fetchone()
        return None if row is None else int(row[0])


def citus_library() -> Path | None:
    """citus.so of the server binaries the clusters run, or None where Citus is not installed
    (the library and the extension's control file both)."""
    pg_config = bindir() / "pg_config"
    r = subprocess.run([str(pg_config), "--pkglibdir"], capture_output=True, text=True, check=False)
    s = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True, check=False)
    if r.returncode != 0 or s.returncode != 0:
        return None
    lib = Path(r.stdout.strip()) / "citus.so"
    control = Path(s.stdout.strip()) / "extension" / "citus.control"
    return lib if lib.is_file() and control.is_file() else None


@dataclass
class CitusCluster:
    """A Citus coordinator and workers on one machine, for tests and benchmarks: one embedded
    cluster per node under ``home`` (coordinator/, worker1/, ...), on ports port, port + 1, ...
    Nodes name each other by socket directory and authenticate by peer as the superuser (the
    backends run as the server's OS user), so no node listens on TCP.  Every node runs the
    same binaries and loads movrec from the same venv path."""

    home: Path
    port: int
    n_workers: int = 2

    @property
    def coordinator(self) -> Cluster:
        return Cluster(self.home / "coordinator", self.port, citus=True)

    @property
    def workers(self) -> list[Cluster]:
        return [
            Cluster(self.home / f"worker{i}", self.port + i, citus=True)
            for i in range(1, self.n_workers + 1)
        ]

    @property
    def nodes(self) -> list[Cluster]:
        return [self.coordinator, *self.workers]

    def dsn(self, dbname: str = DATABASE) -> str:
        """The coordinator's: applications and movrec's CLI talk to it."""
        return self.coordinator.dsn(dbname)

    def start(self) -> None:
        """initdb every node once and start them (Citus must be installed: `make setup`)."""
        if citus_library() is None:
            raise CliError(
                "Citus is not installed: run `make setup` with CITUS_SRC set to a Citus source "
                "tarball, or install a Citus package"
            )
        for node in self.nodes:
            node.init()
            node.start()

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()

    def create_database(self, name: str) -> str:
        """A new, empty Citus database of this name on every node (dropped first where it
        exists), the workers added to the coordinator's metadata; returns its DSN."""
        for node in self.nodes:
            with psycopg.connect(node.dsn("postgres"), autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            with psycopg.connect(node.dsn(name), autocommit=True) as conn:
                conn.execute("SET client_min_messages = warning")
                conn.execute("CREATE EXTENSION citus")
        with psycopg.connect(self.dsn(name), autocommit=True) as conn:
            c = self.coordinator
            conn.execute("SELECT citus_set_coordinator_host(%s, %s)", (str(c.socket_dir), c.port))
            for w in self.workers:
                conn.execute("SELECT citus_add_node(%s, %s)", (str(w.socket_dir), w.port))
        return self.dsn(name)
