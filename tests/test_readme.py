"""The README works for a stranger: its quick start is what CI runs, needs nothing outside the
repository, and its Python example runs offline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_quick_start_is_two_commands_that_ci_runs_as_written() -> None:
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert len(commands) == 2 and all(command in ci for command in commands), commands
    main_job, tests = commands
    assert main_job.startswith("pip install -e . && hat upscale --sample") and "[test]" not in main_job
    assert '-o "${TMPDIR:-/tmp}/' in main_job  # the output goes outside the repository
    assert tests.endswith("python -m pytest -q")


def test_no_example_needs_the_workspace() -> None:
    for block in _blocks("bash") + _blocks("python"):
        assert "../shared" not in block and "shared/datasets" not in block, block


def test_install_section_tells_both_torch_routes() -> None:
    install = README.split("## Install", 1)[1].split("\n## ", 1)[0]
    assert "https://download.pytorch.org/whl/cpu" in install and "CUDA" in install
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "find-links" in ci and "torch==2.13.0" in ci


def test_models_table_is_one_table() -> None:
    table = README.split("## Models", 1)[1].split("Full names", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("|")]
    block = table[table.index(rows[0]) : table.index(rows[-1]) + len(rows[-1])]
    assert "\n\n" not in block and any("hat-tiny" in row for row in rows)


def test_python_example_runs_offline(tmp_path: Path) -> None:
    code = _blocks("python")[0]
    assert "hat-tiny" in code
    env = {"PYTHONPATH": str(ROOT), "HAT_OFFLINE": "1", "HAT_CACHE_DIR": str(tmp_path / "cache"), "PATH": ""}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    from PIL import Image

    assert Image.open(tmp_path / "parrots_x4.png").size == (640, 640)
