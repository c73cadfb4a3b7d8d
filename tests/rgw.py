"""A throwaway single-node Ceph cluster with an S3 gateway (RGW), for tests that need a real S3.

::

    why = rgw_missing()
    if why is not None:
        pytest.skip(why)
    gw = start_rgw(tmp_path / "ceph")
    try:
        s3 = boto3.client("s3", endpoint_url=gw.endpoint, region_name=gw.region,
                          aws_access_key_id=gw.access_key, aws_secret_access_key=gw.secret_key)
        ...
    finally:
        gw.stop()

One monitor, one OSD on memstore (objects live in the OSD's RAM, nothing reaches the disk) and
radosgw with the beast frontend, all on 127.0.0.1, all without authentication, all child
processes of the caller. ``python tests/rgw.py`` starts one by hand and prints its keys.

The daemons are killed with the thread that started them (PR_SET_PDEATHSIG), so start the
gateway from a thread that outlives its use: the main thread, or a session fixture's.

botocore's default checksums (1.36 on) work here because the endpoint is plain http, where
they travel as headers; over https they become aws-chunked trailers, which Pacific's RGW
refuses (MissingContentLength): there, set request_checksum_calculation="when_required".
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = ["RGW", "rgw_missing", "start_rgw"]

_INSTALL = "apt-get install radosgw ceph-mon ceph-osd"
# `ceph` (from ceph-common, which ceph-mon pulls in) registers the OSD with the monitor.
_TOOLS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
_EXTRA_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")
# A UNIX socket path must fit sockaddr_un.sun_path (108 bytes with the NUL).
_SUN_PATH_MAX = 107
# The longest admin socket name the daemons make in the run dir (radosgw's is pinned to this:
# as a client it would otherwise add its pid and a pointer to the name).
_LONGEST_ASOK = "/ceph-client.rgw.gw.asok"
_RGW_NAME = "client.rgw.gw"
_PR_SET_PDEATHSIG = 1


def _which(tool: str) -> str | None:
    # sbin is often missing from a non-root PATH, and the Debian packages put nothing there
    # today, but other builds of Ceph do.
    path = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_DIRS])
    return shutil.which(tool, path=path)


def rgw_missing() -> str | None:
    """One line naming what is missing to run a gateway here, or None when nothing is."""
    missing = [tool for tool in _TOOLS if _which(tool) is None]
    if not missing:
        return None
    return f"no {', '.join(missing)} on PATH (Ceph: {_INSTALL})"


def _free_port() -> int:
    # The port is free when we look; a daemon binds it a few hundred ms later, a race we
    # accept on a test machine (a collision shows up as a clear start failure).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def _death_pact() -> Callable[[], None] | None:
    """A preexec_fn tying a child's life to the thread that forks it, or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl  # looked up before fork: after it only async-signal-safe work is wise
    parent = os.getpid()

    def pact() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # Had the parent died before prctl, no signal would ever come.
        if os.getppid() != parent:
            os._exit(1)

    return pact


def _kill(procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    # SIGKILL, not SIGTERM: nothing is kept, so a clean shutdown buys nothing, and SIGKILL
    # cannot be stalled by a daemon waiting on its peers (radosgw on the OSD, say).
    for _name, proc in reversed(procs):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    for _name, proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


@dataclass(eq=False)
class RGW:
    """A running gateway: the S3 endpoint, its one user's keys, and the daemons behind it."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    workdir: Path
    conf: Path
    _procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list, repr=False)
    _owned: list[Path] = field(default_factory=list, repr=False)

    def stop(self, *, keep_logs: bool = True) -> None:
        """Kill the daemons and delete their data; the logs stay unless keep_logs is False.

        Safe to call more than once."""
        _kill(self._procs)
        self._procs.clear()
        for path in self._owned:
            shutil.rmtree(path, ignore_errors=True)
        self._owned.clear()
        if not keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> RGW:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _conf_text(
    *,
    fsid: str,
    mon_port: int,
    rgw_port: int,
    workdir: Path,
    run_dir: Path,
    memstore_bytes: int,
) -> str:
    w = workdir
    return f"""\
[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_port}]
# Without it the OSD binds and advertises the host's address, not loopback.
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
# radosgw defaults this to "secure", which needs cephx session keys: with auth none it can
# never talk to the monitor (send_auth_request ... returned -13, forever).
ms mon client mode = crc
run dir = {run_dir}
log file = {w}/log/$name.log
mon cluster log file = {w}/log/cluster.log
crash dir = {w}/crash
mon data = {w}/mon
osd data = {w}/osd
rgw data = {w}/rgw
# Nothing here is kept; the defaults point at /var/lib/ceph and /etc/ceph.
keyring = {w}/keyring
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
# One OSD: every pool has one copy, and CRUSH must not look for a second host.
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd crush chooseleaf type = 0
# RGW makes 7 pools; at the default 32 PGs each they would pass the monitor's 250 PGs per OSD
# and the 8th would be refused. Few PGs also peer faster.
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
# The full ratios are written into the first OSD map: writes stop at full_ratio of the
# memstore size, so let a test fill nearly all of it (the failsafe must stay above them all,
# or health turns to HEALTH_ERR "full ratio(s) out of order").
osd failsafe full ratio = .99
mon osd full ratio = .98
mon osd backfillfull ratio = .97
mon osd nearfull ratio = .96
# The monitor shuts itself down when its disk falls under 5% free; this one keeps nothing.
mon data avail crit = 0
mon data avail warn = 0
mon warn on pool no redundancy = false
# No ceph-mgr runs: S3 needs none, it would add RAM and startup time. Its absence is
# HEALTH_WARN "no active mgr", which turns to HEALTH_ERR after this grace (default 60 s).
# Without a mgr, `ceph df`, `ceph osd df` and `ceph pg ...` hang: use `rados ls` or RGW's own
# admin commands instead.
mon mgr inactive grace = 31536000
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
# Registering the OSD, its boot and each of the pools RGW creates are map changes; at the
# default 1 s between proposals the start took 11.5 s instead of 1.1 s.
paxos propose interval = 0.05
paxos min wait = 0.01
debug ms = 0
debug mon = 0
debug osd = 0
debug paxos = 0
debug auth = 0

[{_RGW_NAME}]
admin socket = $run_dir/$cluster-$name.asok
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
# A deleted or overwritten object's data (and an aborted upload's parts) waits for the garbage
# collector, by default for 2 h and then for an hourly pass: in a memstore that is RAM held,
# and a suite that rewrites its objects would fill the OSD. Seconds here.
rgw gc obj min wait = 2
rgw gc processor period = 5
rgw gc processor max time = 5
"""


class _Cluster:
    """The half-built gateway: the daemons it has started so far, for cleanup on failure."""

    def __init__(self, workdir: Path, conf: Path, deadline: float) -> None:
        self.workdir = workdir
        self.conf = conf
        self.deadline = deadline
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.env = {k: v for k, v in os.environ.items() if k != "CEPH_ARGS"}
        self.env["CEPH_CONF"] = str(conf)
        # sbin is searched by rgw_missing(); the tools must then be found here too.
        self.env["PATH"] = os.pathsep.join([self.env.get("PATH", ""), *_EXTRA_DIRS])
        self.pact = _death_pact()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def logs(self, *names: str) -> list[Path]:
        """A daemon's own log, then what it printed (where it says why it could not start)."""
        return [self.workdir / "log" / f"{n}{ext}" for n in names for ext in (".log", ".out")]

    def fail(self, what: str, logs: list[Path]) -> RuntimeError:
        """The error for a step, with the tail of the first of logs that has anything in it."""
        for log in logs:
            if log.exists() and log.stat().st_size > 0:
                return RuntimeError(f"{what}; the tail of {log}:\n{_tail(log)}")
        return RuntimeError(f"{what}; nothing in {', '.join(map(str, logs))}")

    def run(self, name: str, *args: str) -> None:
        """A one-shot tool; its output goes to log/NAME.out, its log (if any) to NAME.log."""
        out = self.workdir / "log" / f"{name}.out"
        with out.open("ab") as log:
            try:
                done = subprocess.run(
                    [*args, "-c", str(self.conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    timeout=max(self.left(), 1.0),
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise self.fail(f"{args[0]} did not finish in time", [out]) from None
        if done.returncode != 0:
            raise self.fail(f"{' '.join(args)} exited with {done.returncode}", [out])

    def daemon(self, name: str, *args: str) -> None:
        out = self.workdir / "log" / f"{name}.out"
        with out.open("ab") as log:
            proc = subprocess.Popen(
                [*args, "-f", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                # Its own process group, so that stop() can kill whatever it forks too. No
                # --setuser: the daemons stay whoever we are, root or not, and a change of
                # user would also clear the parent-death signal.
                process_group=0,
                preexec_fn=self.pact,
            )
        self.procs.append((name, proc))

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise self.fail(f"{name} exited with {proc.returncode}", self.logs(name))


def _asok(path: Path, prefix: str) -> dict[str, object] | None:
    """A daemon's answer to an admin socket command, or None while it cannot answer it."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(path))
            sock.sendall(json.dumps({"prefix": prefix}).encode() + b"\0")
            # The reply is a 4-byte big-endian length, then that much JSON.
            data = b""
            while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                data += chunk
        # Until the daemon has registered the command, the answer is an error in plain text.
        answer = json.loads(data[4:])
    except (OSError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def _wait_osd(cluster: _Cluster, asok: Path) -> None:
    """Until the OSD has booted into the map.

    Started earlier, radosgw creates its first pool before the OSD is up, and once in ~80
    starts here its first I/O to that pool then stalled for 5 s (a timer's period): waiting
    costs ~0.2 s and no start since has stalled."""
    while True:
        cluster.check_alive()
        status = _asok(asok, "status")
        if status is not None and status.get("state") == "active":
            return
        if cluster.left() <= 0:
            raise cluster.fail("the OSD did not boot within the timeout", cluster.logs("osd.0"))
        time.sleep(0.05)


def _wait_http(cluster: _Cluster, url: str) -> None:
    """Until the gateway answers HTTP at all: any status will do."""
    while True:
        cluster.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=min(max(cluster.left(), 0.1), 2.0)) as resp:
                resp.read()
            return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError):
            pass
        if cluster.left() <= 0:
            # A gateway that logged nothing yet is most often waiting for the OSD.
            raise cluster.fail(
                f"radosgw did not answer on {url} within the timeout",
                cluster.logs(_RGW_NAME, "osd.0", "mon.a"),
            )
        time.sleep(0.1)


def _key(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def start_rgw(
    workdir: Path,
    *,
    timeout_s: float = 60.0,
    memstore_bytes: int = 4 << 30,
) -> RGW:
    """Bring up a monitor, a memstore OSD and radosgw under workdir and return the gateway.

    workdir is the gateway's own: new, empty, or one a gateway used before (it is reset).

    Returns once the S3 endpoint answers and its user exists. Raises RuntimeError, with the
    tail of the log that tells why, when a step fails or the whole takes over timeout_s.
    memstore_bytes is the OSD's size: it holds every object (and RGW's own bookkeeping) in
    RAM, and writes stop at 98% of it."""
    why = rgw_missing()
    if why is not None:
        raise RuntimeError(why)
    workdir = workdir.absolute()
    conf = workdir / "ceph.conf"
    if workdir.exists() and any(workdir.iterdir()) and not conf.exists():
        # Below, its subdirectories are emptied: never those of somebody else's directory.
        raise RuntimeError(f"{workdir} is neither empty nor a gateway's (no ceph.conf)")
    for sub in ("mon", "osd", "rgw", "log", "crash", "run"):
        # A workdir reused after a crash would hold a monitor store that mkfs refuses.
        shutil.rmtree(workdir / sub, ignore_errors=True)
        (workdir / sub).mkdir(parents=True)
    run_dir = workdir / "run"
    owned = [workdir / "mon", workdir / "osd", workdir / "rgw", workdir / "crash"]
    if len(str(run_dir)) + len(_LONGEST_ASOK) > _SUN_PATH_MAX:
        # A deep workdir (pytest's tmp_path under a long TMPDIR) would give socket paths
        # that cannot be bound: the sockets go to a short directory instead.
        run_dir.rmdir()
        run_dir = Path(tempfile.mkdtemp(prefix="rgw-", dir="/tmp"))
    owned.append(run_dir)

    mon_port, rgw_port = _free_port(), _free_port()
    while rgw_port == mon_port:
        rgw_port = _free_port()
    fsid = str(uuid.uuid4())
    conf.write_text(
        _conf_text(
            fsid=fsid,
            mon_port=mon_port,
            rgw_port=rgw_port,
            workdir=workdir,
            run_dir=run_dir,
            memstore_bytes=memstore_bytes,
        )
    )
    cluster = _Cluster(workdir, conf, time.monotonic() + timeout_s)
    try:
        monmap = run_dir / "monmap"
        cluster.run(
            "monmaptool",
            "monmaptool",
            "--create",
            "--clobber",
            "--fsid",
            fsid,
            "--addv",
            "a",
            f"[v2:127.0.0.1:{mon_port}]",
            str(monmap),
        )
        cluster.run("mon.a", "ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap))
        osd_uuid = str(uuid.uuid4())
        # mkfs of a memstore OSD only writes a few files and needs no monitor.
        cluster.run(
            "osd.0", "ceph-osd", "--mkfs", "-i", "0", "--osd-uuid", osd_uuid, "--no-mon-config"
        )
        cluster.daemon("mon.a", "ceph-mon", "-i", "a")
        # The OSD must be in the map before it boots; the CLI waits for the monitor's quorum.
        cluster.run(
            "osd.0",
            "ceph",
            "--connect-timeout",
            str(max(int(cluster.left()), 1)),
            "osd",
            "new",
            osd_uuid,
            "0",
        )
        # --no-mon-config: the monitor's config database holds nothing here, and fetching it
        # is one more wait on the monitor before the daemon even reads ceph.conf.
        cluster.daemon("osd.0", "ceph-osd", "-i", "0", "--no-mon-config")
        _wait_osd(cluster, run_dir / "ceph-osd.0.asok")
        # radosgw makes its pools and default zone itself on first start.
        cluster.daemon(_RGW_NAME, "radosgw", "-n", _RGW_NAME, "--no-mon-config")
        endpoint = f"http://127.0.0.1:{rgw_port}"
        _wait_http(cluster, endpoint + "/")
        access_key = _key(string.ascii_uppercase + string.digits, 20)
        secret_key = _key(string.ascii_letters + string.digits, 40)
        cluster.run(
            "radosgw-admin",
            "radosgw-admin",
            "--no-mon-config",
            "user",
            "create",
            "--uid=test",
            "--display-name=test",
            f"--access-key={access_key}",
            f"--secret-key={secret_key}",
        )
        cluster.check_alive()
    except BaseException:
        _kill(cluster.procs)
        for path in owned:
            shutil.rmtree(path, ignore_errors=True)
        raise
    gw = RGW(
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        # The default zonegroup's api_name: what SigV4 scopes and LocationConstraint name.
        region="default",
        workdir=workdir,
        conf=conf,
        _procs=cluster.procs,
        _owned=owned,
    )
    # A test that forgets stop() still leaves no daemons (and no RAM held) behind.
    atexit.register(gw.stop)
    return gw


def _main() -> None:
    why = rgw_missing()
    if why is not None:
        sys.exit(why)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # A shell starts a background job with SIGINT ignored, and Python then keeps it so;
    # `kill -INT` is as good a way to stop this as Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="rgw-"))
    began = time.monotonic()
    try:
        gw = start_rgw(workdir)
    except RuntimeError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        sys.exit(str(exc))
    try:
        print(f"up in {time.monotonic() - began:.1f} s (Ctrl-C stops it)")
        print(f"endpoint   {gw.endpoint}")
        print(f"access key {gw.access_key}")
        print(f"secret key {gw.secret_key}")
        print(f"region     {gw.region}")
        print(f"ceph.conf  {gw.conf}")
        sys.stdout.flush()
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        gw.stop(keep_logs=False)


if __name__ == "__main__":
    _main()
