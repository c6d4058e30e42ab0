"""benchmarks/gpu_check.py --smoke: the GPU proof's script runs every section on the CPU with tiny
networks, so it cannot rot while no GPU is at hand (issue 18)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = (
    "environment",
    "fixtures",
    "correctness",
    "guard",
    "rcan",
    "lam",
    "speed",
    "memory",
    "oom",
    "switches",
    "attention",
    "compile",
    "flex",
)


def run(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), str(out), "--smoke", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], str]:
    out = tmp_path_factory.mktemp("gpu_check")
    result = run(out)
    data = json.loads((out / "gpu_check.json").read_text())
    return result, data, (out / "gpu_check.md").read_text()


def rows(data: dict[str, Any], section: str) -> list[dict[str, Any]]:
    return data["sections"][section]["rows"]


def test_smoke_run_finishes_every_section_within_its_budget(smoke) -> None:
    result, data, _ = smoke
    assert result.returncode == 0, result.stderr[-3000:]
    meta = data["meta"]
    assert meta["mode"] == "smoke" and meta["device"] == "cpu" and meta["status"] == "finished"
    assert meta["elapsed_s"] < meta["budget_s"]
    assert [name for name in data["sections"]] == list(SECTIONS)
    for name, section in data["sections"].items():
        assert section["status"] == "ok", (name, section)
        assert "seconds" in section
    env = data["environment"]
    assert env["torch"] and env["measured_bf16_matmul_tflops"] > 0 and env["measured_fp32_matmul_tflops"] > 0
    assert env["tf32_matmul"] is False and env["tf32_cudnn"] is False
    assert not [t for t in meta["targets"] if t["verdict"] in ("met", "NOT met")]  # targets are for GPU runs


def test_markdown_file_and_printed_table(smoke) -> None:
    result, _, markdown = smoke
    for name in SECTIONS[1:]:
        assert f"## {name}: ok" in markdown
    assert "## Targets (issue 18)" in markdown and "| environment | |" in markdown
    assert "## correctness: ok" in result.stdout and "| model | dtype | mode |" in result.stdout


def test_reference_fixtures_agree_to_1e5_in_fp32(smoke) -> None:
    _, data, _ = smoke
    fixtures = rows(data, "fixtures")
    fp32 = [r for r in fixtures if r["dtype"] == "fp32"]
    assert len(fp32) == 6  # tests/data/hat-reference: three models, two cases each
    assert all(r["max_abs_err"] <= 1e-5 and r["pass"] for r in fp32)
    bf16 = [r for r in fixtures if r["dtype"] == "bf16"]
    assert len(bf16) == 6 and all(r["psnr_db"] >= 45 and r["pass"] for r in bf16)
    assert not [r for r in fixtures if r["dtype"] == "fp16"]  # CUDA only
    assert all(r["non_finite"] == 0 for r in fixtures)


def test_correctness_rows_meet_their_tolerances(smoke) -> None:
    _, data, _ = smoke
    correctness = rows(data, "correctness")
    seen = {(r["model"], r["dtype"], r["mode"]) for r in correctness}
    assert seen == {
        (m, d, k) for m in ("hat-s", "hat", "hat-l") for d in ("fp32", "bf16") for k in ("whole", "tiled", "batched")
    }
    for row in correctness:
        assert row["pass"] and row["non_finite"] == 0, row
        if row["dtype"] == "fp32":
            assert row["max_abs_err"] <= 1e-5, row
        else:
            assert row["psnr_db"] >= 45, row
        if row["mode"] == "batched":
            assert row["batch"] > 1
            if row["dtype"] == "fp32":
                assert row["uint8_equals_float_rounded"] is True


def test_rcan_and_han_rows_meet_their_tolerances(smoke) -> None:
    _, data, markdown = smoke
    rcan = rows(data, "rcan")
    assert {(r["model"], r["dtype"], r["mode"]) for r in rcan} == {
        (m, d, k) for m in ("han", "rcan") for d in ("fp32", "bf16") for k in ("whole", "tiled", "batched")
    }
    for row in rcan:
        assert row["pass"] and row["non_finite"] == 0, row
        if row["dtype"] == "fp32":
            assert row["max_abs_err"] <= 1e-5, row
        else:
            assert row["psnr_db"] >= 45, row
        assert row["batch"] > 1 if row["mode"] == "batched" else row["batch"] == 1
    notes = data["sections"]["rcan"]["notes"]
    assert any(n.startswith("han: ") for n in notes) and any(n.startswith("rcan: ") for n in notes)
    assert "## rcan: ok" in markdown


def test_lam_rows_agree_with_the_cpu(smoke) -> None:
    _, data, markdown = smoke
    lam = rows(data, "lam")
    assert [r["model"] for r in lam] == ["hat (tiny)", "han (tiny)"]
    for row in lam:
        assert row["pass"] and row["non_finite"] == 0 and row["dtype"] == "fp32", row
        assert row["attribution_rel_err"] <= 1e-4 and row["di_diff"] <= 0.01, row
        assert 0 < row["di_device"] < 100 and row["steps"] == 4 and row["batch"] >= 1
        assert row["steps_per_s"] > 0 and row["cpu_steps_per_s"] > 0
    assert "## lam: ok" in markdown


def test_guard_oom_switch_and_compile_rows_pass(smoke) -> None:
    _, data, _ = smoke
    guard = rows(data, "guard")
    assert guard and all(r["pass"] for r in guard) and guard[0]["fp32_recomputed"] == 1
    oom = rows(data, "oom")
    assert len(oom) == 2 and all(r["pass"] and r["oom_retries"] >= 1 for r in oom)
    switches = rows(data, "switches")
    assert {r["switch"].split(" =")[0] for r in switches} == {"tiling.DEVICE_BANDS", "layers.CHANNELS_LAST_DEVICES"}
    assert all(r["pass"] for r in switches)
    assert next(r for r in switches if r["switch"].startswith("tiling"))["uint8_identical"] is True
    attention = rows(data, "attention")
    assert [r["case"] for r in attention] == ["window attention", "OCAB"]
    for row in attention:
        assert row["sdpa_err"] < 0.05 and row["math_ms"] > 0  # bf16 inputs vs an fp32 reference
    flex = rows(data, "flex")
    assert [r["case"] for r in flex] == ["window attention", "OCAB"]
    assert all("flex" in r or r["flex_err"] < 0.05 for r in flex)  # "flex": not in this torch
    compiled = rows(data, "compile")
    assert len(compiled) == 2 and compiled[1]["pass"] and compiled[1]["graphs"] == 1


def test_speed_and_memory_rows_are_complete(smoke) -> None:
    _, data, _ = smoke
    speed = [r for r in rows(data, "speed") if "path" not in r]
    assert {(r["model"], r["size"], r["dtype"]) for r in speed} == {
        (m, s, d) for m in ("hat-s", "hat", "hat-l") for s in (16, 32) for d in ("fp32", "bf16")
    }
    for row in speed:
        assert row["ours_ms"] > 0 and row["ours_mps"] > 0 and row["gflop"] > 0
        if "spandrel_ms" in row and row["dtype"] == "fp32":  # spandrel is optional (installed or in .whl/)
            assert row["max_abs_err_vs_spandrel"] <= 1e-4
    user = [r for r in rows(data, "speed") if "path" in r]
    assert [r["size"] for r in user] == [32, 48]
    memory = rows(data, "memory")
    assert all(r["predicted_mib"] > 0 for r in memory if "tile" in r)
    assert len([r for r in memory if "image" in r]) == 3


def test_budget_skips_what_does_not_fit_and_still_writes_the_files(tmp_path: Path) -> None:
    result = run(tmp_path, "--budget-s", "1", "--sections", "environment,correctness")
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    statuses = {name: section["status"] for name, section in data["sections"].items()}
    assert statuses["correctness"].startswith("skipped: budget")
    assert statuses["speed"] == "skipped: not selected"
    assert "skipped: budget" in (tmp_path / "gpu_check.md").read_text()
