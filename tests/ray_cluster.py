"""A real multi-node Ray cluster on loopback only, for tests and benchmarks.

Everything Ray runs - head, extra nodes, workers, the driver - lives in a private network namespace
that holds nothing but ``lo`` (so no packet can reach any other address, not even this machine's own
interface) and in a private PID namespace, so the whole cluster dies with it:

    pytest ──stdin/stdout JSON──> unshare --net --pid --mount-proc --fork --kill-child
                                    └─ PID 1: ``python ray_cluster.py supervise`` (reaps, nothing else)
                                        └─ supervisor: ``ray start --head``, ``ray start --address``,
                                           drivers; kills a node on request; tears down on exit

Cleanup is layered, so no Ray process outlives the client even when a test fails or pytest is killed:

1. ``LoopbackCluster.close`` (``with`` block, fixture teardown) asks the supervisor to stop: it sends
   SIGKILL to every process of the namespace, then exits;
2. the namespace's PID 1 exits when the supervisor does, and the kernel then SIGKILLs every process
   left in the PID namespace - Ray workers that made their own process group or session included;
3. the supervisor stops on EOF of its stdin (the client died) and on SIGTERM/SIGINT/SIGHUP;
4. ``unshare`` runs with ``PR_SET_PDEATHSIG`` (it dies with the client) and ``--kill-child`` (PID 1
   dies with it), so even a SIGKILLed pytest leaves nothing behind;
5. :func:`leftover_processes` scans the host's ``/proc`` for the cluster's marker variable
   (``HAT_RAY_CLUSTER=<id>``, inherited by every process Ray starts) to prove it.

Ports: every node gets its own block (``BASE_PORT + 1000 * node``); since the network namespace is
private, fixed ports cannot collide with anything else on the host or with a parallel test run.
Authentication: token mode with a fresh random token in ``RAY_AUTH_TOKEN`` for every process, and a
private ``HOME``, so ``~/.ray/auth_token`` of the real home is never read or written.

Usage (see tests/test_ray_cluster_harness.py)::

    with LoopbackCluster(nodes=2) as cluster:
        driver = cluster.spawn("poc", [sys.executable, "benchmarks/ray_poc.py", ...])
        ...  # watch driver.stdout_path, then cluster.kill_node(2)
        assert cluster.wait("poc", timeout=120) == 0
    assert not leftover_processes(cluster.cluster_id)
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BASE_PORT = 20000
MARKER = "HAT_RAY_CLUSTER"
NODE_MARKER = "HAT_RAY_NODE"
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Shared configuration
# ----------------------------------------------------------------------------------------------


@dataclass
class ClusterConfig:
    nodes: int = 2
    cpus_per_node: float = 1
    object_store_bytes: int = 200_000_000
    # Ray system config for the head (JSON, hidden `ray start --system-config`), e.g. faster failure
    # detection of a killed node: the GCS marks it dead after period * threshold.
    system_config: dict[str, Any] = field(
        default_factory=lambda: {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    )
    env: dict[str, str] = field(default_factory=dict)
    cluster_id: str = field(default_factory=lambda: secrets.token_hex(6))
    workdir: str = ""  # client-side folder for logs (ray start output, drivers' stdout/stderr)
    root: str = ""  # short folder in /tmp for Ray's temp dirs (unix socket paths max 107 bytes) and HOME
    keep_temp: bool = False  # keep Ray's session folders (logs) after teardown, for debugging

    def ports(self, node: int) -> dict[str, int]:
        """The ports of node ``node`` (1 = head): one block of 1000 each, all explicit."""
        base = BASE_PORT + 1000 * node
        return {
            "gcs": BASE_PORT + 1000 + 379,  # the head's --port, which every node joins
            "node_manager": base + 1,
            "object_manager": base + 2,
            "runtime_env_agent": base + 3,
            "metrics_export": base + 4,
            "dashboard_agent_listen": base + 5,
            "dashboard_agent_grpc": base + 6,
            "dashboard": base + 7,  # dashboard is off; the port is still pinned
            "min_worker": base + 100,
            "max_worker": base + 199,
        }

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports(1)['gcs']}"


def ray_start_argv(config: ClusterConfig, node: int, temp_dir: str) -> list[str]:
    """The ``ray start`` command line of node ``node`` (1 = head)."""
    p = config.ports(node)
    ray = str(Path(sys.executable).with_name("ray"))
    argv = [ray, "start"]
    if node == 1:
        argv += [
            "--head",
            "--port",
            str(p["gcs"]),
            "--include-dashboard",
            "false",
            "--dashboard-port",
            str(p["dashboard"]),
        ]
        if config.system_config:
            argv += ["--system-config", json.dumps(config.system_config)]
    else:
        argv += ["--address", config.address]
    argv += [
        "--node-ip-address", "127.0.0.1",
        "--num-cpus", f"{config.cpus_per_node:g}",
        "--object-store-memory", str(config.object_store_bytes),
        "--node-manager-port", str(p["node_manager"]),
        "--object-manager-port", str(p["object_manager"]),
        "--runtime-env-agent-port", str(p["runtime_env_agent"]),
        "--metrics-export-port", str(p["metrics_export"]),
        "--dashboard-agent-listen-port", str(p["dashboard_agent_listen"]),
        "--dashboard-agent-grpc-port", str(p["dashboard_agent_grpc"]),
        "--min-worker-port", str(p["min_worker"]),
        "--max-worker-port", str(p["max_worker"]),
        "--temp-dir", temp_dir,
        "--disable-usage-stats",
    ]  # fmt: skip
    return argv


# ----------------------------------------------------------------------------------------------
# Inside the namespaces: PID 1 and the supervisor
# ----------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[supervisor {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _proc_info(pid: int) -> dict[str, Any] | None:
    """cmd, ppid and marker variables of a live process; None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if stat[0] == "Z":
            return None
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    markers = dict(item.decode(errors="replace").split("=", 1) for item in environ if item.startswith(b"HAT_RAY_"))
    info = {"cmd": cmd[:200], "ppid": int(stat[1]), "cluster": markers.get(MARKER), "node": markers.get(NODE_MARKER)}
    if "/raylet/raylet " in cmd and "--node_id=" in cmd:  # Ray's id of the node, as the driver sees it
        info["ray_node_id"] = cmd.split("--node_id=", 1)[1].split()[0]
    return info


def _ns_processes() -> dict[int, dict[str, Any]]:
    """Every live process of this PID namespace but PID 1 and ours: pid -> {cmd, ppid, node}.

    ``node`` comes from the ``HAT_RAY_NODE`` variable given to that node's ``ray start``, which its
    raylet and daemons inherit, and from the parent chain for the raylet's children: Ray's workers
    and agents rename themselves (``ray::IDLE``, ``ray::DashboardAgent``) with setproctitle, which
    overwrites the memory that ``/proc/PID/environ`` shows, so their own variables cannot be read.
    """
    me = os.getpid()
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in (1, me) and (info := _proc_info(int(entry))):
            found[int(entry)] = info
    for pid, info in found.items():
        seen, cur = set(), pid
        while info["node"] is None and cur in found and cur not in seen:
            seen.add(cur)
            cur = found[cur]["ppid"]
            if cur in found and found[cur]["node"] is not None:
                info["node"] = found[cur]["node"]
        info["node"] = int(info["node"]) if info["node"] is not None else None
        del info["cluster"]
    return found


class Supervisor:
    """Runs in the namespaces: starts nodes and drivers, kills nodes, answers JSON commands on stdin."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.root = Path(config.root)
        self.home = self.root / "home"
        self.home.mkdir(exist_ok=True)
        token = secrets.token_hex(32)
        self.env = {
            **os.environ,
            **config.env,
            "HOME": str(self.home),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TMPDIR": str(self.root),  # a driver's local ray.init() would use /tmp/ray otherwise
            MARKER: config.cluster_id,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        self.drivers: dict[str, subprocess.Popen] = {}
        self.node_dirs: dict[int, str] = {}

    # -- nodes --------------------------------------------------------------------------------
    def start_node(self, node: int) -> dict[str, Any]:
        temp_dir = str(self.root / f"n{node}")
        self.node_dirs[node] = temp_dir
        log = Path(self.config.workdir) / f"ray-start-node{node}.log" if self.config.workdir else None
        t0 = time.monotonic()
        with open(log or os.devnull, "ab") as out:
            done = subprocess.run(
                ray_start_argv(self.config, node, temp_dir),
                env={**self.env, NODE_MARKER: str(node)},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=180,
            )
        seconds = time.monotonic() - t0
        if done.returncode != 0:
            raise RuntimeError(f"ray start for node {node} failed ({done.returncode}); see {log}")
        _log(f"node {node} started in {seconds:.1f} s")
        return {"node": node, "seconds": round(seconds, 2)}

    def kill_node(self, node: int, sig: int = signal.SIGKILL) -> dict[str, Any]:
        """Every process of node ``node`` (raylet, agents, workers): SIGSTOP all first, so none reacts
        to the others' deaths, then ``sig`` - like a machine that vanishes."""
        victims: dict[int, dict[str, Any]] = {}
        for _ in range(20):  # freeze until no new process of the node appears (a worker being forked)
            new = {pid: p for pid, p in _ns_processes().items() if p["node"] == node and pid not in victims}
            if not new:
                break
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            victims.update(new)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                if sig != signal.SIGKILL:
                    os.kill(pid, signal.SIGCONT)
        _log(f"node {node}: sent signal {sig} to {len(victims)} processes")
        return {"node": node, "killed": [{"pid": pid, **p} for pid, p in sorted(victims.items())]}

    # -- drivers ------------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
              stdout: str | None = None, stderr: str | None = None) -> dict[str, Any]:  # fmt: skip
        if name in self.drivers and self.drivers[name].poll() is None:
            raise RuntimeError(f"driver {name} is still running")
        out = open(stdout or os.devnull, "wb")  # noqa: SIM115 - handed to the child
        err = open(stderr, "wb") if stderr else subprocess.STDOUT  # noqa: SIM115
        try:
            base = {k: v for k, v in self.env.items() if k != "RAY_ADDRESS"}
            if self.config.nodes:  # nodes=0: no cluster, the driver's ray.init() starts a local instance
                base["RAY_ADDRESS"] = self.config.address
            proc = subprocess.Popen(
                argv,
                env={**base, **(env or {})},
                cwd=cwd or str(REPO),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        finally:
            out.close()
            if not isinstance(err, int):
                err.close()
        self.drivers[name] = proc
        return {"name": name, "pid": proc.pid}

    def poll(self, name: str) -> dict[str, Any]:
        return {"name": name, "returncode": self.drivers[name].poll()}

    def send_signal(self, name: str, sig: int) -> dict[str, Any]:
        proc = self.drivers[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        return {"name": name, "returncode": proc.poll()}

    # -- teardown -----------------------------------------------------------------------------
    def teardown(self, grace_s: float = 0.0) -> dict[str, Any]:
        """Stop every process of the namespace (SIGTERM and ``grace_s`` to go, then SIGKILL)."""
        t0 = time.monotonic()
        left = _ns_processes()
        if grace_s > 0:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while left and time.monotonic() < deadline:
                time.sleep(0.1)
                left = _ns_processes()
        for _ in range(50):
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for proc in self.drivers.values():
                proc.poll()  # reap our own children; PID 1 reaps the rest
            time.sleep(0.05)
            left = _ns_processes()
            if not left:
                break
        if not self.config.keep_temp:
            for node_dir in self.node_dirs.values():
                shutil.rmtree(node_dir, ignore_errors=True)
        return {"seconds": round(time.monotonic() - t0, 2), "left": sorted(left)}

    # -- command loop -------------------------------------------------------------------------
    def serve(self) -> int:
        def stop(signum: int, frame: Any) -> None:
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, stop)
        reply_to = sys.stdout
        sys.stdout = sys.stderr  # stray prints never corrupt the protocol
        try:
            for line in sys.stdin:
                request = json.loads(line)
                cmd = request.pop("cmd")
                try:
                    if cmd == "shutdown":
                        result = self.teardown(**request)
                        reply_to.write(json.dumps({"ok": True, "result": result}) + "\n")
                        reply_to.flush()
                        return 0
                    handler = {
                        "start_node": self.start_node,
                        "kill_node": self.kill_node,
                        "spawn": self.spawn,
                        "poll": self.poll,
                        "signal": self.send_signal,
                        "ps": lambda: {"processes": {str(k): v for k, v in _ns_processes().items()}},
                    }[cmd]
                    reply = {"ok": True, "result": handler(**request)}
                except Exception as exc:
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                reply_to.write(json.dumps(reply) + "\n")
                reply_to.flush()
            _log("stdin closed: tearing down")
            return 0
        finally:
            self.teardown()


def loopback_up() -> None:
    """``ip link set lo up`` without iproute2: SIOCGIFFLAGS/SIOCSIFFLAGS on a socket (sends nothing)."""
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack("16sh", fcntl.ioctl(sock, siocgifflags, struct.pack("16sh", b"lo", 0)))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def _pid1(config: ClusterConfig) -> int:
    """PID 1 of the new PID namespace: bring up ``lo``, fork the supervisor, reap every orphan.

    When the supervisor exits, so does PID 1, and the kernel kills whatever is left in the namespace.
    """
    loopback_up()
    child = os.fork()
    if child == 0:
        try:
            code = Supervisor(config).serve()
        except BaseException as exc:
            _log(f"supervisor failed: {exc!r}")
            code = 1
        sys.stdout.flush()
        os._exit(code)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, f: os.kill(child, s))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if pid == child:
            return os.waitstatus_to_exitcode(status)


# ----------------------------------------------------------------------------------------------
# Outside: the client a test uses
# ----------------------------------------------------------------------------------------------


def _set_pdeathsig() -> None:
    """In the forked child before exec: die with the parent (thread) that started us."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def unshare_available() -> str | None:
    """None when ``unshare --net --pid`` works here, else why not."""
    if not sys.platform.startswith("linux"):
        return "needs Linux namespaces"
    if shutil.which("unshare") is None:
        return "needs util-linux unshare"
    try:
        done = subprocess.run(
            [
                "unshare",
                "--net",
                "--pid",
                "--mount-proc",
                "--fork",
                "--kill-child",
                sys.executable,
                "-c",
                f"import sys; sys.path.insert(0, {str(REPO)!r}); "
                "from tests.ray_cluster import loopback_up; loopback_up()",
            ],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if done.returncode != 0:
        return f"unshare --net --pid not permitted: {done.stderr.decode(errors='replace').strip()}"
    return None


ROOT_PREFIX = "hatray-"  # /tmp/hatray-<cluster id>-<random>: Ray temp dirs and HOME of one cluster


def sweep_stale_roots(folder: Path = Path("/tmp"), min_age_s: float = 60) -> list[str]:
    """Remove cluster folders whose client died without cleaning up (its ``.lock`` is not held)."""
    import fcntl

    removed = []
    for root in folder.glob(f"{ROOT_PREFIX}*"):
        lock = root / ".lock"
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:  # being created, or a crash right then: only old ones go
            with contextlib.suppress(OSError):
                if time.time() - root.stat().st_mtime > min_age_s:
                    shutil.rmtree(root, ignore_errors=True)
                    removed.append(str(root))
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live client holds it
        finally:
            os.close(fd)  # also drops the lock we may have taken
        shutil.rmtree(root, ignore_errors=True)
        removed.append(str(root))
    return removed


def _namespace(pid: int, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def leftover_processes(cluster_id: str, namespaces: tuple[str, ...] = ()) -> list[tuple[int, str]]:
    """Host processes that belong to a cluster: inside one of its ``namespaces`` (``"net:[4026…]"``,
    ``"pid:[4026…]"``, as ``/proc/PID/ns/*`` links read) or carrying its marker variable. Reading
    other processes' ``ns`` links and ``environ`` needs root (or the same user)."""
    needle = f"{MARKER}={cluster_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        inside = any(_namespace(pid, kind) in namespaces for kind in ("net", "pid"))
        try:
            marked = needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            zombie = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if inside or (marked and not zombie):
            found.append((pid, cmd[:200]))
    return found


@dataclass
class Driver:
    name: str
    pid: int  # in the cluster's PID namespace
    stdout_path: Path
    stderr_path: Path

    def lines(self) -> list[str]:
        try:
            return self.stdout_path.read_text().splitlines()
        except FileNotFoundError:
            return []


class LoopbackCluster:
    """A real Ray cluster of ``nodes`` nodes on 127.0.0.1 in private namespaces (see module doc).

    ``start()`` (or ``with``) brings up every node and returns; ``spawn`` runs a driver inside with
    ``RAY_ADDRESS`` set; ``kill_node``/``start_node`` take nodes down and up; ``close`` tears all down.
    """

    def __init__(self, workdir: Path | str, nodes: int = 2, **config: Any) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = ClusterConfig(nodes=nodes, workdir=str(self.workdir), **config)
        self.proc: subprocess.Popen | None = None
        self.root: Path | None = None  # set by start(): Ray's temp dirs and HOME, locked while we live
        self._lock = -1
        self.timings: dict[str, float] = {}
        self.drivers: dict[str, Driver] = {}
        self.namespaces: tuple[str, ...] = ()

    @property
    def cluster_id(self) -> str:
        return self.config.cluster_id

    @property
    def address(self) -> str:
        return self.config.address

    def start(self) -> LoopbackCluster:
        import fcntl

        t0 = time.monotonic()
        sweep_stale_roots()
        self.root = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{self.cluster_id}-", dir="/tmp"))
        self._lock = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # held while this client lives: see sweep_stale_roots
        self.config.root = str(self.root)
        try:
            return self._start(t0)
        except BaseException:
            self.close()
            raise

    def _start(self, t0: float) -> LoopbackCluster:
        self._stderr = open(self.workdir / "supervisor.log", "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--pid", "--mount-proc", "--fork", "--kill-child",
             sys.executable, __file__, "supervise", json.dumps(asdict(self.config))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            preexec_fn=_set_pdeathsig,
        )  # fmt: skip
        for node in range(1, self.config.nodes + 1):
            self.timings[f"node{node}_s"] = self.request("start_node", timeout=200, node=node)["seconds"]
            if not self.namespaces:
                self._record_namespaces()
        if not self.namespaces:  # no node: a round trip proves unshare is done, then read them
            self.request("ps")
            self._record_namespaces()
        self.timings["start_s"] = round(time.monotonic() - t0, 2)
        return self

    def _record_namespaces(self) -> None:
        """The namespaces ``unshare`` made (it has entered the net one and forked into the pid one)."""
        assert self.proc is not None
        found = (_namespace(self.proc.pid, "net"), _namespace(self.proc.pid, "pid_for_children"))
        if None not in found and found[0] != _namespace(os.getpid(), "net"):
            self.namespaces = tuple(n for n in found if n)

    def survivors(self) -> list[tuple[int, str]]:
        """Processes of this cluster still alive on the host (to call after :meth:`close`)."""
        return leftover_processes(self.cluster_id, self.namespaces)

    def request(self, cmd: str, timeout: float = 60, **args: Any) -> Any:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"supervisor: no answer to {cmd} within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"supervisor exited ({self.proc.poll()}); see {self.workdir / 'supervisor.log'}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"supervisor: {cmd} failed: {reply['error']}")
        return reply["result"]

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Driver:
        out, err = self.workdir / f"{name}.out", self.workdir / f"{name}.err"
        result = self.request(
            "spawn", name=name, argv=[str(a) for a in argv], env=env, stdout=str(out), stderr=str(err)
        )
        self.drivers[name] = Driver(name, result["pid"], out, err)
        return self.drivers[name]

    def poll(self, name: str) -> int | None:
        return self.request("poll", name=name)["returncode"]

    def wait(self, name: str, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll(name)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"driver {name} still running after {timeout} s")
            time.sleep(0.2)
        return code

    def send_signal(self, name: str, sig: int) -> int | None:
        return self.request("signal", name=name, sig=int(sig))["returncode"]

    def kill_node(self, node: int, sig: int = signal.SIGKILL) -> list[dict[str, Any]]:
        return self.request("kill_node", node=node, sig=int(sig))["killed"]

    def start_node(self, node: int) -> float:
        return self.request("start_node", timeout=200, node=node)["seconds"]

    def ensure_nodes(self) -> list[int]:
        """Start again every node but the head that has no process left (after :meth:`kill_node`), so
        a cluster shared by several tests has all its nodes; returns the nodes started."""
        alive = {info["node"] for info in self.processes().values()}
        started = [node for node in range(2, self.config.nodes + 1) if node not in alive]
        for node in started:
            self.start_node(node)
        return started

    def processes(self) -> dict[int, dict[str, Any]]:
        return {int(k): v for k, v in self.request("ps")["processes"].items()}

    def close(self) -> dict[str, Any]:
        """Tear everything down; idempotent; never raises for a supervisor already gone."""
        result: dict[str, Any] = {}
        t0 = time.monotonic()
        if self.proc is not None:
            try:
                if self.proc.poll() is None:
                    result = self.request("shutdown", timeout=30)
            except (OSError, RuntimeError, TimeoutError, ValueError):
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # unshare's --kill-child then kills PID 1, and the kernel the namespace
                self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                with contextlib.suppress(OSError):
                    stream.close()  # type: ignore[union-attr]
            self._stderr.close()
            self.proc = None
        if self.root is not None:
            if not self.config.keep_temp:
                shutil.rmtree(self.root, ignore_errors=True)
            os.close(self._lock)
            self.root = None
        self.timings["stop_s"] = round(time.monotonic() - t0, 2)
        return result

    def __enter__(self) -> LoopbackCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str]) -> int:
    """``supervise CONFIG`` (internal) or ``exec [--nodes N] [--workdir DIR] -- CMD...``: run CMD as a
    driver against a fresh loopback cluster (``--nodes 0``: no cluster, just the namespaces), print its
    output, tear down and report timings and survivors on stderr."""
    if len(argv) == 2 and argv[0] == "supervise":
        return _pid1(ClusterConfig(**json.loads(argv[1])))
    import argparse

    parser = argparse.ArgumentParser(prog="ray_cluster.py", description=main.__doc__)
    parser.add_argument("action", choices=["exec"])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = parser.parse_args(argv[:split]), argv[split + 1 :]
    if not command:
        parser.error("no command after --")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hat-ray-exec-"))
    with LoopbackCluster(workdir, nodes=args.nodes) as cluster:
        driver = cluster.spawn("exec", command)
        code = cluster.wait("exec", timeout=3600)
    sys.stdout.write(driver.stdout_path.read_text())
    sys.stderr.write(driver.stderr_path.read_text()[-4000:])
    print(json.dumps({"returncode": code, "timings": cluster.timings, "survivors": cluster.survivors(),
                      "workdir": str(workdir)}), file=sys.stderr)  # fmt: skip
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
