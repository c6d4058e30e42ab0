"""The loopback Ray cluster harness (tests/ray_cluster.py) with the Ray Data proof of concept
(benchmarks/ray_poc.py): a real 2-node cluster on 127.0.0.1 in private network and PID namespaces.

Skipped when Ray (with its data extra) is missing or ``unshare --net --pid`` is not permitted.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.ray_cluster import LoopbackCluster, leftover_processes, sweep_stale_roots, unshare_available

pytest.importorskip("ray", reason="Ray is not installed (pip install 'ray[data]')")
pytest.importorskip("ray.data", reason="Ray Data needs the extra: pip install 'ray[data]'")
_why_not = unshare_available()
pytestmark = pytest.mark.skipif(_why_not is not None, reason=f"loopback Ray cluster: {_why_not}")

REPO = Path(__file__).resolve().parents[1]
POC = REPO / "benchmarks" / "ray_poc.py"
FILES = 30


def events(lines: list[str]) -> list[dict]:
    """The POC's JSON events; Ray also forwards worker and raylet log lines to the driver's stdout,
    from another thread: one may land on the same line, right after an event (seen after Ctrl-C:
    ``{"event": "interrupted", ...}(raylet) Task ... failed``), so only the leading object counts."""
    decoder = json.JSONDecoder()
    return [decoder.raw_decode(line)[0] for line in lines if line.startswith('{"event"')]


def records(lines: list[str]) -> list[dict]:
    return [e for e in events(lines) if e["event"] == "record"]


def summary(lines: list[str]) -> dict:
    found = [e for e in events(lines) if e["event"] == "summary"]
    assert found, "no summary:\n" + "\n".join(lines[-20:])
    return found[-1]


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".hat-part")) if folder.exists() else []


def wait_until(condition, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)
    return value


def check_outputs(out: Path, inputs: list[Path], corrupt: set[str]) -> None:
    """Every good input has a complete 2x output; the corrupt ones have none; no temporary is left."""
    from PIL import Image

    assert temporaries(out) == []
    for path in inputs:
        target = out / path.name
        if path.name in corrupt:
            assert not target.exists()
            continue
        with Image.open(target) as img:
            img.load()  # a truncated file would fail here
            assert img.size == (64, 64)


@pytest.fixture
def cluster(loopback_ray_cluster: LoopbackCluster) -> LoopbackCluster:
    """The session's 2-node cluster (tests/conftest.py), with both nodes up."""
    loopback_ray_cluster.ensure_nodes()
    return loopback_ray_cluster


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[list[Path], Path, set[str]]:
    """30 small PNGs, the last one garbage; plus an empty output folder."""
    sys.path.insert(0, str(POC.parent))
    try:
        from ray_poc import make_inputs
    finally:
        sys.path.remove(str(POC.parent))
    paths = make_inputs(tmp_path / "in", FILES, corrupt=1)
    return paths, tmp_path / "out", {paths[-1].name}


def poc_argv(inputs: tuple[list[Path], Path, set[str]], *extra: object) -> list[str]:
    paths, out, _ = inputs
    journal = out.parent / "journal.jsonl"
    return [sys.executable, str(POC), "run", "--input", str(paths[0].parent), "--output", str(out),
            "--journal", str(journal), *map(str, extra)]  # fmt: skip


def journal(out: Path) -> Counter:
    """How many times each file was attempted to the end (the actors append one line per attempt)."""
    lines = (out.parent / "journal.jsonl").read_text().splitlines()
    return Counter(json.loads(line)["path"] for line in lines)


LOOPBACK_PROBE = """
import json, os, socket, ray

def listening():  # local addresses of listening TCP sockets, from /proc (no ss needed)
    found = []
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in open(f"/proc/net/{name}").read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":
                continue
            host, port = local.split(":")
            raw = b"".join(bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, len(host), 8))
            found.append((socket.inet_ntop(family, raw), int(port, 16)))
    return found

ray.init()
print(json.dumps({"nodes": [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]],
                  "cpus": ray.cluster_resources()["CPU"], "links": sorted(name for _, name in socket.if_nameindex()),
                  "listen": listening(), "home": os.path.expanduser("~"), "tmp": os.environ["RAY_TMPDIR"]}))
"""


def test_cluster_is_loopback_only_with_two_nodes(cluster: LoopbackCluster) -> None:
    driver = cluster.spawn("loopback", [sys.executable, "-c", LOOPBACK_PROBE])
    assert cluster.wait("loopback", timeout=60) == 0, driver.stderr_path.read_text()[-2000:]
    info = json.loads([line for line in driver.lines() if line.startswith("{")][-1])
    assert info["nodes"] == ["127.0.0.1", "127.0.0.1"]
    assert info["cpus"] == 2
    assert info["links"] == ["lo"]
    assert info["listen"] and {host for host, _ in info["listen"]} <= {"127.0.0.1", "::ffff:127.0.0.1"}
    ports = {port for _, port in info["listen"]}
    for node in (1, 2):  # the ports the harness pinned are the ones in use
        p = cluster.config.ports(node)
        assert {p["node_manager"], p["object_manager"], p["runtime_env_agent"]} <= ports
    assert cluster.config.ports(1)["gcs"] in ports
    # never the real ~/.ray (auth token) nor the shared /tmp/ray
    assert info["home"].startswith(str(cluster.root)) and info["tmp"] == str(cluster.root)


def test_driver_without_the_token_is_refused(cluster: LoopbackCluster) -> None:
    """Token auth is on: a wrong token is rejected by the GCS (ray.init would give up after ~20 s)."""
    driver = cluster.spawn(
        "intruder", [sys.executable, "-c", "import ray; ray.init()"], env={"RAY_AUTH_TOKEN": "0" * 64}
    )
    try:
        wait_until(lambda: "InvalidAuthToken" in driver.stderr_path.read_text(), 30, "the GCS to refuse the token")
    finally:
        cluster.send_signal("intruder", signal.SIGKILL)


def test_poc_processes_every_file_on_both_nodes(cluster: LoopbackCluster, inputs) -> None:
    paths, out, corrupt = inputs
    driver = cluster.spawn("poc", poc_argv(inputs, "--expect-nodes", 2, "--delay", 0.1))
    assert cluster.wait("poc", timeout=120) == 0, driver.stderr_path.read_text()[-3000:]
    result = summary(driver.lines())
    assert (result["files"], result["ok"], result["failed"], result["missing"]) == (FILES, FILES - 1, 1, [])
    assert result["duplicates"] == {}
    recs = records(driver.lines())
    assert len({r["node"] for r in recs}) == 2, "both nodes should have worked"
    [failed] = [r for r in recs if r["status"] == "failed"]
    assert Path(failed["path"]).name in corrupt and "cannot identify image" in failed["error"]
    assert journal(out)[failed["path"]] == 1, "a corrupt file is attempted once, never retried"
    check_outputs(out, paths, corrupt)


def test_an_exception_escaping_the_udf_fails_the_run_without_retries(cluster: LoopbackCluster, inputs) -> None:
    """What the per-file try/except protects against: with max_task_retries=-1, an application error
    is still not retried (Ray Data's actor_task_retry_on_errors=False); the run stops at once."""
    paths, out, _ = inputs
    driver = cluster.spawn("raise", poc_argv(inputs, "--expect-nodes", 2, "--raise-errors"))
    assert cluster.wait("raise", timeout=120) == 2, driver.stderr_path.read_text()[-3000:]
    [error] = [e for e in events(driver.lines()) if e["event"] == "error"]
    assert "cannot identify image file" in error["error"]
    raised = [json.loads(line) for line in (out.parent / "journal.jsonl").read_text().splitlines()]
    assert [r["path"] for r in raised if r["status"] == "raised"] == [str(paths[-1])], "raised once, not retried"
    assert temporaries(out) == []


def test_sigint_on_the_driver_stops_the_work(cluster: LoopbackCluster, inputs) -> None:
    out = inputs[1]
    driver = cluster.spawn("ctrl-c", poc_argv(inputs, "--expect-nodes", 2, "--delay", 0.2, "--slow-write", 0.5))
    wait_until(lambda: len(records(driver.lines())) >= 4 and temporaries(out), 90, "a few records and a write")
    cluster.send_signal("ctrl-c", signal.SIGINT)
    assert cluster.wait("ctrl-c", timeout=30) == 130
    kinds = [e["event"] for e in events(driver.lines())]
    assert "interrupted" in kinds and "summary" not in kinds
    assert temporaries(out) == []  # the driver swept what the killed actors left
    # the job's actors are gone with it (Ray Data's own detached helper actors stay, by design)
    wait_until(
        lambda: not any("MapWorker" in p["cmd"] for p in cluster.processes().values()), 10, "MapWorker actors to exit"
    )
    written = sorted(p.name for p in out.glob("*.png"))
    assert 4 <= len(written) < FILES - 1
    time.sleep(1.0)
    assert sorted(p.name for p in out.glob("*.png")) == written, "nothing is written after the driver stopped"
    assert temporaries(out) == []


def test_node_loss_mid_run_retries_on_the_head(cluster: LoopbackCluster, inputs) -> None:
    paths, out, corrupt = inputs
    driver = cluster.spawn("kill", poc_argv(inputs, "--expect-nodes", 2, "--delay", 0.2, "--slow-write", 0.2))

    def node2_busy() -> bool:
        recs = records(driver.lines())
        return len(recs) >= 6 and len({r["node"] for r in recs}) == 2

    wait_until(node2_busy, 90, "both nodes to have finished files")
    before = records(driver.lines())
    killed = cluster.kill_node(2)
    [lost] = [k["ray_node_id"][:8] for k in killed if "ray_node_id" in k]  # the raylet's --node_id
    assert any("MapWorker" in k["cmd"] for k in killed), "an actor of the pool was on node 2"
    assert lost in {r["node"] for r in before}
    assert cluster.wait("kill", timeout=150) == 0, driver.stderr_path.read_text()[-3000:]

    result = summary(driver.lines())
    assert (result["ok"], result["failed"], result["missing"]) == (FILES - 1, 1, [])
    assert result["duplicates"] == {}, "each file is reported once"
    after = records(driver.lines())[len(before) :]
    assert len(after) >= 5 and lost not in {r["node"] for r in after[-5:]}, "the rest ran on the head"
    attempts = journal(out)
    assert attempts[str(paths[-1])] == 1, "the corrupt file is still attempted only once"
    assert set(attempts) == {str(p) for p in paths}
    check_outputs(out, paths, corrupt)

    # the node can rejoin
    cluster.start_node(2)
    check = cluster.spawn(
        "rejoin", [sys.executable, "-c", "import ray; ray.init(); print(sum(n['Alive'] for n in ray.nodes()))"]
    )
    assert cluster.wait("rejoin", timeout=60) == 0
    assert check.lines()[-1] == "2"


def test_teardown_survives_a_failing_test_and_a_killed_client(tmp_path: Path) -> None:
    """A ``with`` block that raises, and a client SIGKILLed with its cluster up, leave no process."""
    with pytest.raises(RuntimeError, match="test failed"), LoopbackCluster(tmp_path / "a", nodes=1) as c:
        assert c.processes()
        raise RuntimeError("test failed")
    assert c.survivors() == []

    client = (
        "import json, sys, time\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.ray_cluster import LoopbackCluster\n"
        f"c = LoopbackCluster({str(tmp_path / 'b')!r}, nodes=1).start()\n"
        "print(json.dumps([c.cluster_id, c.namespaces, str(c.root)]), flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", client], stdout=subprocess.PIPE, text=True)
    try:
        cluster_id, namespaces, root = json.loads(proc.stdout.readline())
        assert len(leftover_processes(cluster_id, tuple(namespaces))) > 5  # the cluster is up
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    wait_until(lambda: leftover_processes(cluster_id, tuple(namespaces)) == [], 15, "the orphaned cluster to die")
    assert Path(root).is_dir()  # its client could not clean up: the next start sweeps it (lock released)
    assert root in sweep_stale_roots()
    assert not Path(root).exists()


def test_local_mode_without_a_cluster_address(tmp_path: Path, inputs) -> None:
    """``--address local``: the driver's ray.init() starts a private instance (in the namespaces too)."""
    paths, out, corrupt = inputs
    with LoopbackCluster(tmp_path / "local", nodes=0) as c:
        driver = c.spawn("local", poc_argv(inputs, "--address", "local"))
        assert c.wait("local", timeout=120) == 0, driver.stderr_path.read_text()[-3000:]
    assert c.survivors() == []
    result = summary(driver.lines())
    assert (result["ok"], result["failed"], result["missing"]) == (FILES - 1, 1, [])
    check_outputs(out, paths, corrupt)


def test_plain_mode_never_starts_ray(inputs) -> None:
    """The baseline loop runs outside the namespaces: it must not start Ray as a side effect."""
    import ray

    sys.path.insert(0, str(POC.parent))
    try:
        from ray_poc import main
    finally:
        sys.path.remove(str(POC.parent))
    paths, out, _ = inputs
    for path in paths[3:-1]:
        path.unlink()
    assert main(["plain", "--input", str(paths[0].parent), "--output", str(out)]) == 0
    assert not ray.is_initialized()
    assert len(list(out.glob("*.png"))) == 3
