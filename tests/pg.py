"""A throwaway PostgreSQL cluster from this machine's packages, for the journal's tests.

::

    why = pg_missing()
    if why is not None:
        pytest.skip(why)
    cluster = start_cluster(tmp_path / "pg")
    url = cluster.new_database("t1")   # a fresh database per test
    ...
    cluster.stop()

Debian's ``postgresql`` (``/usr/lib/postgresql/<version>/bin``): ``initdb`` with
``--no-sync`` and trust authentication, on 127.0.0.1 at a free port, its socket in
the data directory's parent, in about a second. ``initdb`` refuses root, so as root
(CI) the cluster runs as the ``postgres`` user the package creates (or ``nobody``).
The server is a child of the caller and is stopped at exit (``atexit``) if
``stop`` was not called. ``python tests/pg.py`` starts one by hand and prints its URL.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from apixo_batch.journal import NewJob

__all__ = ["Cluster", "StillClock", "pg_job", "pg_missing", "start_cluster"]

_INSTALL = "apt-get install postgresql"
_USERS = ("postgres", "nobody")


def _bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _version(path: str) -> int:
    try:
        return int(Path(path).parts[-3])
    except ValueError:
        return 0


def _user() -> pwd.struct_passwd | None:
    """Who runs the server: the caller, unless root (then a system user initdb accepts)."""
    if os.geteuid() != 0:
        return None
    for name in _USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    return None


def pg_missing() -> str | None:
    """One line naming what is missing to start a cluster here, or None."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return "no psycopg 3 / psycopg-pool (pip install -e '.[dev]')"
    binaries = _bin()
    if binaries is None or not (binaries / "initdb").exists():
        return f"no PostgreSQL server binaries (initdb, pg_ctl) ({_INSTALL})"
    if os.geteuid() == 0 and _user() is None:
        return "running as root and no postgres or nobody user to run PostgreSQL as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A running cluster: ``url(db)`` names a database on it."""

    bin: Path
    data: Path
    port: int
    user: pwd.struct_passwd | None
    superuser: str
    #: the server's command-line options (``pg_ctl -o``), for a start after a stop
    options: str = ""
    stopped: bool = False

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{self.superuser}{secret}@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        preexec = None
        if self.user is not None:
            uid, gid = self.user.pw_uid, self.user.pw_gid

            def preexec() -> None:
                os.setgid(gid)
                os.setuid(uid)

        return subprocess.run(
            argv,
            check=check,
            capture_output=True,
            text=True,
            preexec_fn=preexec,
            env={**os.environ, "LC_ALL": "C"},
        )

    def new_database(self, name: str) -> str:
        """A fresh, empty database ``name`` (dropped first if it exists); its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def restart(self, mode: str = "fast", down_s: float = 0.0) -> None:
        """Stop and start the server: ``fast`` (sessions ended, a checkpoint) or
        ``immediate`` (as a crash: no checkpoint, recovery from the WAL at start, and the
        UNLOGGED tables come back empty); ``down_s``: seconds it stays down between."""
        # -l: the server's output to its log, not to our pipe (which would never close).
        log = ("-l", str(self.data.parent / "log"))
        pg_ctl = (str(self.bin / "pg_ctl"), "-D", str(self.data))
        if down_s <= 0:
            self._run(*pg_ctl, *log, "-m", mode, "-w", "restart")
            return
        self._run(*pg_ctl, "-m", mode, "-w", "stop")
        time.sleep(down_s)
        self._run(*pg_ctl, "-o", self.options, *log, "-w", "-t", "30", "start")

    def kill_postmaster(self, down_s: float = 1.0) -> None:
        """``kill -9`` of the postmaster (its backends die as they notice), ``down_s``
        seconds, then a start: recovery from the WAL, the UNLOGGED tables empty. The
        start is tried again while the dying backends still hold the shared memory."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        time.sleep(down_s)
        start = (str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", self.options)
        log = ("-l", str(self.data.parent / "log"))
        for _ in range(50):
            if self._run(*start, *log, "-w", "-t", "30", "start", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError("the cluster did not start again after its postmaster was killed")

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-m",
            "immediate",
            "-w",
            "stop",
            check=False,
        )
        shutil.rmtree(self.data.parent, ignore_errors=True)


def start_cluster(
    parent: Path | None = None, *, preload: str | None = None, fsync: bool = True
) -> Cluster:
    """initdb, then start, a cluster in a new folder under ``parent`` (a temp dir);
    ``preload``: its shared_preload_libraries (the bench's pg_stat_statements)."""
    binaries = _bin()
    assert binaries is not None, pg_missing()
    user = _user()
    root = Path(tempfile.mkdtemp(prefix="apixo-pg-", dir=parent))
    data = root / "data"
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    superuser = user.pw_name if user is not None else pwd.getpwuid(os.geteuid()).pw_name
    cluster = Cluster(binaries, data, _free_port(), user, superuser)
    cluster._run(
        str(binaries / "initdb"),
        "--no-sync",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--locale=C",
        "-U",
        superuser,
        "-D",
        str(data),
    )
    options = (
        f"-p {cluster.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} "
        f"-c fsync={'on' if fsync else 'off'} -c max_connections=100"
    )
    if preload:
        options += f" -c shared_preload_libraries={preload}"
    cluster.options = options
    cluster._run(
        str(binaries / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(root / "log"),
        "-w",
        "-t",
        "30",
        "start",
    )
    atexit.register(cluster.stop)
    return cluster


if __name__ == "__main__":
    why = pg_missing()
    if why is not None:
        raise SystemExit(why)
    started = time.monotonic()
    c = start_cluster()
    print(f"{c.url()}  (started in {time.monotonic() - started:.2f} s; Ctrl-C stops it)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        c.stop()


#: the wall time the journal tests' clocks start at
NOW = 1_767_965_610.0


class StillClock:
    """Wall and monotonic time that move only when told (the database reads the same
    through the statements' ``now``); nothing on it may sleep."""

    def __init__(self) -> None:
        self.now = NOW

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("nothing here sleeps")

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pg_job(n: int, subject: str = "an owl") -> NewJob:
    """Job ``n`` of a journal test's campaign: ``job-NN``, one veo3-fast result."""
    text = json.dumps({"prompt": f"{subject}, take {n}"})
    return NewJob(
        id=f"job-{n:02d}",
        idx=n,
        model="veo3-fast",
        provider="google",
        input_json=text,
        input_hash=hashlib.sha256(text.encode()).hexdigest(),
        filename=f"job-{n:02d}.mp4",
        cost_usd=0.5,
    )
