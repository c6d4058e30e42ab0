"""``hat upscale --engine ray`` and the Ray Data API (hat_cli/ray.py).

The cluster tests run the real CLI as a driver on a real 2-node Ray cluster on 127.0.0.1, inside
private network and PID namespaces (tests/ray_cluster.py): byte-identical outputs and the same JSON
records as the local engine for every image mode, a node killed mid-run, Ctrl-C and a resumed run, a
local Ray instance without an address, and the Python API. They are skipped when Ray (with its data
extra) is missing or ``unshare --net --pid`` is not permitted; the tests without a cluster (Ray
missing, the local engine never importing Ray, option checks, records) run everywhere.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hat_cli.atomic import TEMP_SUFFIX
from hat_cli.batch import FileResult, Job, RunOptions
from hat_cli.cli import app
from hat_cli.errors import ConfigError
from hat_cli.ray import RECORD_FIELDS, UpscaleFiles, _cluster_failure, _result, describe_upscaler
from tests._batch_images import build_tree, save_tiny_weights, write_png16
from tests.ray_cluster import LoopbackCluster, unshare_available

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _cluster_skip() -> str | None:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return "Ray is not installed (pip install 'hat-cli[ray]')"
    return unshare_available()


_why_not = _cluster_skip()
needs_cluster = pytest.mark.skipif(_why_not is not None, reason=f"loopback Ray cluster: {_why_not}")


# ------------------------------------------------------------------------------------ helpers
def hat_argv(*args: object) -> list[str]:
    return [sys.executable, "-m", "hat_cli", "upscale", *map(str, args)]


def json_objects(lines: list[str]) -> list[dict]:
    """Every stdout line is JSON (Ray must not print on the --json stream)."""
    return [json.loads(line) for line in lines if line.strip()]


def records(lines: list[str]) -> list[dict]:
    return [o for o in json_objects(lines) if o["type"] == "file"]


def summary_of(lines: list[str]) -> dict:
    objects = json_objects(lines)
    assert objects and objects[-1]["type"] == "summary", "\n".join(lines[-5:])
    return objects[-1]


def temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith(TEMP_SUFFIX)) if root.exists() else []


def outputs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def comparable(record: dict, root: Path, out: Path) -> dict:
    """A record with its paths relative to the run's input and output folders, and no timing."""
    text = json.dumps({k: v for k, v in record.items() if k != "seconds"})
    return json.loads(text.replace(str(out), "OUT").replace(str(root), "IN"))


def wait_until(condition, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)
    return value


def local_run(*args: object) -> tuple[int, list[str]]:
    """The local engine, in this process: (exit code, stdout lines)."""
    result = runner.invoke(app, ["upscale", *map(str, args)])
    return result.exit_code, result.stdout.splitlines()


@dataclass
class Inputs:
    folder: Path
    reference: Path  # the local engine's outputs
    ref_lines: list[str]  # its --json stdout
    ref_code: int


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


# Both engines run the same model on the CPU in fp32, whole images (the tiny model's tiles would
# be the whole image anyway).
MODEL = ("--device", "cpu", "--precision", "fp32", "--tile", "0")
# 2 actors of half a CPU each on 1-CPU nodes: one per node (Ray Data spreads them), and after a
# node loss its replacement still fits on the head.
RAY = ("--engine", "ray", "--workers", "2", "--cpus-per-worker", "0.5")
SLOW = 20  # files of the slow set


@pytest.fixture(scope="module")
def modes(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Inputs:
    """Every image mode (RGB, RGBA, LA, grey, 16-bit grey/RGB PNG and TIFF, palette, CMYK, animated)
    in nested folders, broken files and a text file, plus 16 noise images: 31 files; and the local
    engine's outputs and records for them."""
    root = tmp_path_factory.mktemp("modes")
    folder = root / "in"
    build_tree(folder)
    rng = np.random.default_rng(0)
    for i in range(16):
        (folder / "noise").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / "noise" / f"n{i:02d}.png")
    reference = root / "ref"
    code, lines = local_run(folder, "-r", "-o", reference, "--weights", weights, *MODEL, "--json")
    return Inputs(folder, reference, lines, code)


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Inputs:
    """20 larger images (a few tenths of a second each here), to act while a run is going: RGB,
    RGBA, 16-bit RGB and grey in turn, so a fault mid-run meets every kind of output."""
    root = tmp_path_factory.mktemp("slow")
    folder = root / "in"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(SLOW):
        path = folder / f"s{i:02d}.png"
        kind = i % 4
        if kind == 2:
            write_png16(path, rng.integers(0, 65536, (128, 128, 3), dtype=np.uint16))
        else:
            channels = {0: 3, 1: 4, 3: 1}[kind]
            pixels = rng.integers(0, 256, (128, 128, channels), dtype=np.uint8)
            Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(path)
    reference = root / "ref"
    code, lines = local_run(folder, "-o", reference, "--weights", weights, *MODEL, "--json")
    assert code == 0
    return Inputs(folder, reference, lines, code)


@pytest.fixture
def cluster(loopback_ray_cluster: LoopbackCluster) -> LoopbackCluster:
    """The session's 2-node cluster (tests/conftest.py), with both nodes up."""
    loopback_ray_cluster.ensure_nodes()
    return loopback_ray_cluster


def ray_run(cluster: LoopbackCluster, name: str, *args: object, timeout: float = 150):
    """Run ``hat upscale ARGS --engine ray`` as a driver on the cluster; (exit code, stdout lines, stderr)."""
    driver = cluster.spawn(name, hat_argv(*args, "--ray-address", cluster.address))
    code = cluster.wait(name, timeout=timeout)
    return code, driver.lines(), driver.stderr_path.read_text()


# ------------------------------------------------------------------------------------ on the cluster
@needs_cluster
def test_ray_engine_equals_the_local_engine_byte_for_byte(cluster: LoopbackCluster, modes: Inputs, weights, tmp_path):
    out = tmp_path / "out"
    code, lines, stderr = ray_run(
        cluster, "modes", modes.folder, "-r", "-o", out, "--weights", weights, *MODEL, *RAY, "--json"
    )
    assert code == modes.ref_code == 1, stderr[-3000:]  # 3 broken inputs fail in both

    # the same files, byte for byte: every mode, the folder tree mirrored; nothing else
    ours, local = outputs(out), outputs(modes.reference)
    assert ours == local  # CMYK JPEG too: its sRGB profile carries no creation time
    assert len(ours) == 27 and temporaries(out) == []

    # the same records (fields and values; completion order on Ray), and the same summary
    mine = sorted((comparable(r, modes.folder, out) for r in records(lines)), key=lambda r: r["input"])
    theirs = [comparable(r, modes.folder, modes.reference) for r in records(modes.ref_lines)]
    assert mine == sorted(theirs, key=lambda r: r["input"]) and len(mine) == 31
    assert all(list(r) == list(records(modes.ref_lines)[0]) for r in records(lines))
    assert summary_of(lines) | {"seconds": 0} == summary_of(modes.ref_lines) | {"seconds": 0}
    assert summary_of(lines)["model"] == "tiny.safetensors" and summary_of(lines)["scale"] == 2
    # each failure is one line on stderr naming the file, as the local engine prints it
    assert stderr.count("error: ") == 3 and f"error: {modes.folder / 'bad' / 'empty.png'}: empty file" in stderr


@needs_cluster
def test_the_python_api_runs_a_folder_and_a_ray_data_pipeline(
    cluster: LoopbackCluster, slow: Inputs, weights, tmp_path
):
    """upscale_folder_on_cluster as the CLI does; UpscaleFiles in a user's own map_batches."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("s00.png", "s01.png", "s02.png"):
        shutil.copy(slow.folder / name, src / name)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    script = tmp_path / "pipeline.py"
    script.write_text(API_SCRIPT)
    driver = cluster.spawn(
        "api", [sys.executable, str(script), str(weights), str(src), str(tmp_path / "a"), str(tmp_path / "b")]
    )
    assert cluster.wait("api", timeout=150) == 0, driver.stderr_path.read_text()[-3000:]
    result = json.loads(driver.lines()[-1])

    summary = result["summary"]
    assert (summary["done"], summary["failed"], summary["exit_code"], summary["scale"]) == (3, 1, 1, 2)
    assert result["too_many_workers"].startswith("--workers 9 x 0.5 CPU, 0 GPU does not fit the Ray cluster (2 CPUs")
    assert result["initialized_after"] is False  # it connected, and disconnected at the end
    for name in ("s00", "s01", "s02"):
        expected = (slow.reference / f"{name}_x2.png").read_bytes()
        assert (tmp_path / "a" / f"{name}_x2.png").read_bytes() == expected
        assert (tmp_path / "b" / f"{name}.png").read_bytes() == expected

    rows = result["rows"]  # the user's own column comes through; the records have the CLI's fields
    assert [r["tag"] for r in rows] == [0, 1, 2, 3] and all(set(r) == {"tag", *RECORD_FIELDS} for r in rows)
    assert [r["status"] for r in rows] == ["failed", "done", "done", "done"]
    assert "broken.png" in rows[0]["error"] and rows[0]["output"] is None and rows[0]["width"] is None
    assert (rows[1]["width"], rows[1]["height"]) == (256, 256)


API_SCRIPT = """
import json, os, sys
import ray
from hat_cli.errors import ClusterError
from hat_cli.ray import UpscaleFiles, run_on_cluster, upscale_folder_on_cluster
from hat_cli.batch import Job
from pathlib import Path

weights, src, out_a, out_b = sys.argv[1:5]
summary = upscale_folder_on_cluster(src, out_a, weights=weights, device="cpu", workers=2, cpus_per_worker=0.5)
initialized_after = ray.is_initialized()

ray.init()  # a pipeline of the user's own, on the connection it made
try:
    run_on_cluster([Job(Path(src), Path(out_b))], {"weights": weights}, workers=9, cpus_per_worker=0.5)
except ClusterError as exc:
    too_many = str(exc)
names = sorted(os.listdir(src))
ds = ray.data.from_items([{"source": os.path.join(src, n), "output": os.path.join(out_b, n), "tag": i}
                          for i, n in enumerate(names)], override_num_blocks=len(names))
ds = ds.map_batches(UpscaleFiles, fn_constructor_kwargs={"weights": weights, "device": "cpu"}, batch_size=1,
                    compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5)
rows = sorted(({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in ds.iter_rows()),
              key=lambda r: r["tag"])
print(json.dumps({"summary": summary.to_json(), "initialized_after": initialized_after,
                  "too_many_workers": too_many, "rows": rows}))
"""


@needs_cluster
def test_ctrl_c_stops_the_cluster_work_and_skip_existing_resumes(
    cluster: LoopbackCluster, slow: Inputs, weights, tmp_path
):
    out = tmp_path / "out"
    args = (slow.folder, "-o", out, "--weights", weights, *MODEL, *RAY, "--json")
    driver = cluster.spawn("ctrl-c", hat_argv(*args, "--ray-address", cluster.address))
    wait_until(lambda: len(records(driver.lines())) >= 3, 120, "three files done")
    cluster.send_signal("ctrl-c", signal.SIGINT)
    assert cluster.wait("ctrl-c", timeout=60) == 130, driver.stderr_path.read_text()[-3000:]

    summary = summary_of(driver.lines())
    done = [Path(r["output"]).name for r in records(driver.lines())]
    assert summary["interrupted"] and summary["exit_code"] == 130 and summary["not_started"] == SLOW - len(done)
    assert 3 <= len(done) < SLOW
    assert temporaries(out) == []  # what the killed actors were writing is gone
    wait_until(lambda: not any("UpscaleFiles" in p["cmd"] for p in cluster.processes().values()), 15, "actors to exit")
    # every reported file is there, and complete; so are files an actor finished while the driver
    # was stopping (their records were still on the way): complete or absent, never partial
    written = outputs(out)
    assert set(done) <= set(written) and len(written) < SLOW
    assert all(data == (slow.reference / name).read_bytes() for name, data in written.items())
    time.sleep(1.0)
    assert outputs(out) == written, "nothing is written after the driver stopped"

    code, lines, stderr = ray_run(cluster, "resume", *args, "--skip-existing")
    assert code == 0, stderr[-3000:]
    resumed = summary_of(lines)
    assert (resumed["skipped"], resumed["done"], resumed["failed"]) == (len(written), SLOW - len(written), 0)
    assert outputs(out) == outputs(slow.reference) and temporaries(out) == []


@needs_cluster
def test_a_node_killed_mid_run_loses_nothing(cluster: LoopbackCluster, slow: Inputs, weights, tmp_path):
    """The last test on this cluster (it takes node 2 down): the run still ends with every file."""
    out = tmp_path / "out"
    args = (slow.folder, "-o", out, "--weights", weights, *MODEL, *RAY, "--json")
    driver = cluster.spawn("kill", hat_argv(*args, "--ray-address", cluster.address))
    wait_until(lambda: len(records(driver.lines())) >= 5, 120, "five files done")
    killed = cluster.kill_node(2)
    before = len(records(driver.lines()))
    assert any("UpscaleFiles" in k["cmd"] for k in killed), "an actor of the pool was on node 2"
    assert cluster.wait("kill", timeout=150) == 0, driver.stderr_path.read_text()[-3000:]

    found = records(driver.lines())
    assert before < SLOW, "the node died mid-run"
    assert sorted(Path(r["input"]).name for r in found) == sorted(p.name for p in slow.folder.iterdir())
    assert {r["status"] for r in found} == {"done"}  # each file once, all done
    assert summary_of(driver.lines())["exit_code"] == 0
    assert outputs(out) == outputs(slow.reference) and temporaries(out) == []  # every output present and valid


@needs_cluster
def test_without_an_address_a_local_ray_instance_runs_the_batch(tmp_path: Path, slow: Inputs, weights) -> None:
    """No --ray-address and no RAY_ADDRESS: the driver starts a private Ray instance (in the
    namespaces too: it binds this machine's interfaces otherwise) and ends it."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("s03.png", "s04.png", "s05.png"):
        shutil.copy(slow.folder / name, src / name)
    out = tmp_path / "out"
    with LoopbackCluster(tmp_path / "local", nodes=0) as c:
        driver = c.spawn("local", hat_argv(src, "-o", out, "--weights", weights, *MODEL, "--engine", "ray", "-v"))
        assert c.wait("local", timeout=150) == 0, driver.stderr_path.read_text()[-3000:]
        assert "ray: 2 worker(s) of 1 CPU, 0 GPU on 1 node(s) (local)" in driver.stderr_path.read_text()
        wait_until(lambda: not c.processes(), 15, "the local instance to end with the run")
    assert c.survivors() == []
    assert outputs(out) == {f"{n}_x2.png": (slow.reference / f"{n}_x2.png").read_bytes() for n in ("s03", "s04", "s05")}


# ------------------------------------------------------------------------------------ without a cluster
def test_without_ray_the_engine_is_one_line_saying_what_to_install(monkeypatch, tmp_path: Path, weights) -> None:
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when not installed
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    result = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), "--weights", str(weights), "--engine", "ray"])
    assert result.exit_code == 2
    assert result.stderr == "error: --engine ray needs Ray: pip install 'hat-cli[ray]'\n"
    assert not (tmp_path / "a_x2.png").exists()


def test_the_local_engine_never_imports_ray(tmp_path: Path, weights) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from hat_cli.cli import app\n"
        "result = CliRunner().invoke(app, sys.argv[1:])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    args = ["upscale", str(tmp_path / "a.png"), "--weights", str(weights), "--device", "cpu", "-q"]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]" and (tmp_path / "a_x2.png").exists()


def test_a_dry_run_on_ray_plans_like_the_local_engine_without_starting_ray(tmp_path: Path, weights) -> None:
    pytest.importorskip("ray.data", reason="needs Ray")
    import ray

    build_tree(tmp_path / "in")
    (tmp_path / "out").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "out" / "rgb_x2.png")  # refused in both: exists
    args = [str(tmp_path / "in"), "-r", "-o", str(tmp_path / "out"), "--weights", str(weights), "--dry-run", "--json"]
    local = runner.invoke(app, ["upscale", *args])
    on_ray = runner.invoke(app, ["upscale", *args, "--engine", "ray"])
    untimed = [{**o, "seconds": 0} if o["type"] == "summary" else o for o in json_objects(local.stdout.splitlines())]
    assert on_ray.exit_code == local.exit_code
    assert [
        {**o, "seconds": 0} if o["type"] == "summary" else o for o in json_objects(on_ray.stdout.splitlines())
    ] == untimed
    assert '"status": "planned"' in on_ray.stdout and "rgb_x2.png: exists" in on_ray.stdout
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "2"], "error: --workers applies to --engine ray only"),
        (["--ray-address", "127.0.0.1:6379"], "error: --ray-address applies to --engine ray only"),
        (["--gpus-per-worker", "0"], "error: --gpus-per-worker applies to --engine ray only"),
        (["--engine", "spark"], "error: --engine 'spark': use local or ray"),
        (["--engine", "ray", "--cpus-per-worker", "0"], "error: --cpus-per-worker 0: must be above 0"),
    ],
)
def test_engine_options_are_checked_before_anything_runs(tmp_path: Path, args: list[str], message: str) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    result = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), "--model", "bicubic", "-s", "2", *args])
    assert (result.exit_code, result.stderr.strip()) == (2, message)
    assert not (tmp_path / "a_x2.png").exists()


@pytest.mark.parametrize(
    "spec",
    [
        {"weights": "WEIGHTS"},
        {"weights": "WEIGHTS", "self_ensemble": True, "device": "cpu"},
        {"model": "bicubic", "scale": 3},
        {"model": "hat-tiny", "scale": 4, "tile": 64},
    ],
)
def test_the_driver_names_outputs_without_building_the_model(spec: dict, weights: Path) -> None:
    from hat_cli.api import open_upscaler

    spec = {k: (str(weights) if v == "WEIGHTS" else v) for k, v in spec.items()}
    name, scale, actor_spec = describe_upscaler(**spec)
    upscaler = open_upscaler(**spec)
    assert (name, scale) == (upscaler.name, upscaler.scale)
    assert open_upscaler(**actor_spec).name == name  # what the actors build from the spec they get


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"weights": "WEIGHTS", "scale": 4}, "is a x2 model but --scale 4 was given"),
        ({"weights": "WEIGHTS", "model": "hat-tiny"}, "give either --model or --weights, not both"),
        ({"weights": "WEIGHTS", "conv_scale": float("nan")}, "--conv-scale nan: must be a finite number"),
        ({"model": "bicubic", "scale": 0}, "scale must be a positive integer"),
        (
            {"model": "hat-tiny", "scale": 4, "conv_scale": 0.1},
            "--conv-scale/--img-range apply to --weights files only",
        ),
        ({"model": "no-such-model"}, "no-such-model"),
    ],
)
def test_the_driver_refuses_what_open_upscaler_refuses(spec: dict, error: str, weights: Path) -> None:
    from hat_cli.api import open_upscaler

    spec = {k: (str(weights) if v == "WEIGHTS" else v) for k, v in spec.items()}
    with pytest.raises(ConfigError, match=error) as ours:
        describe_upscaler(**spec)
    with pytest.raises(ConfigError) as theirs:
        open_upscaler(**spec)
    assert str(ours.value) == str(theirs.value)


def test_upscale_files_writes_outputs_and_returns_records(tmp_path: Path, weights: Path) -> None:
    """The callable class without Ray: what each actor does with a batch."""
    Image.fromarray(np.full((6, 5, 3), 120, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not a png")
    udf = UpscaleFiles(weights=str(weights), device="cpu", quality=90)
    assert udf.options == RunOptions(quality=90, stop=udf.options.stop)
    batch = {
        "source": np.array([str(tmp_path / "a.png"), str(tmp_path / "b.png")]),
        "output": np.array([str(tmp_path / "out" / "a.png"), str(tmp_path / "out" / "b.png")]),
        "id": np.array([7, 8]),
    }
    rows = udf(batch)
    assert list(rows) == ["id", *RECORD_FIELDS] and rows["id"] == [7, 8]
    assert rows["status"] == ["done", "failed"] and rows["type"] == ["file", "file"]
    assert rows["output"] == [str(tmp_path / "out" / "a.png"), None]
    assert (rows["width"], rows["height"]) == ([10, None], [12, None])
    assert rows["error"][0] is None and "b.png" in rows["error"][1]
    with Image.open(tmp_path / "out" / "a.png") as img:
        assert img.size == (10, 12)
    with pytest.raises(ConfigError, match="unknown option"):
        UpscaleFiles(weights=str(weights), tiles=3)


def test_records_keep_the_paths_as_the_user_gave_them(tmp_path: Path) -> None:
    """Actors get absolute paths; results and error messages name files as the local engine does."""
    job = Job(Path("in/a.png"), Path("out/a_x2.png"))
    sent = Job(Path("/work/in/a.png"), Path("/work/out/a_x2.png"))
    row = {"status": "failed", "output": None, "seconds": 0.5, "width": None, "height": None}
    result = _result(job, sent, row | {"error": "/work/out/a_x2.png: cannot write (disk full)"})
    assert result == FileResult(Path("in/a.png"), None, "failed", 0.5, "out/a_x2.png: cannot write (disk full)")
    done = _result(
        job, sent, row | {"status": "done", "output": str(sent.output), "error": None, "width": 4, "height": 2}
    )
    assert done == FileResult(job.source, job.output, "done", 0.5, None, (4, 2))


def test_a_failed_run_is_one_line_naming_the_cause() -> None:
    class ActorDiedError(Exception):
        actor_init_failed = True

    text = (
        "The actor died because of an error raised in its creation task, ray::MapWorker(...).__init__()\n"
        '  File "hat_cli/api.py", line 65, in resolve_device\n'
        '    raise ConfigError("--device cuda: no CUDA GPU is available (use --device cpu)")\n'
        "hat_cli.errors.ConfigError: --device cuda: no CUDA GPU is available (use --device cpu)\n"
    )
    assert _cluster_failure(ActorDiedError(text)) == (
        "the Ray workers could not start: --device cuda: no CUDA GPU is available (use --device cpu)"
    )
    lost = RuntimeError("Traceback ...\nray.exceptions.ObjectLostError: Failed to retrieve object 00ff")
    assert (
        _cluster_failure(lost) == "the Ray run failed: ray.exceptions.ObjectLostError: Failed to retrieve object 00ff"
    )
