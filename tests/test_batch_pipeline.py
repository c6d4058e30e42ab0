"""hat_cli.batch.run_batch without the CLI: order, graceful stop, worker failures, per-file errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from hat_cli.atomic import TEMP_SUFFIX
from hat_cli.batch import FileResult, Job, RunOptions, process_job, run_batch
from tests._batch_images import Bilinear, gradient


def make_jobs(tmp_path: Path, count: int) -> list[Job]:
    jobs = []
    for index in range(count):
        source = tmp_path / f"{index}.png"
        Image.fromarray(gradient(6, 6 + index)).save(source)
        jobs.append(Job(source, tmp_path / "out" / f"{index}.png"))
    return jobs


def test_results_arrive_in_job_order_with_failures_in_place(tmp_path: Path) -> None:
    jobs = make_jobs(tmp_path, 4)
    jobs[1].source.write_bytes(b"junk")
    results: list[FileResult] = []
    assert run_batch(Bilinear(), jobs, results.append) == 0
    assert [r.input for r in results] == [job.source for job in jobs]
    assert [r.status for r in results] == ["done", "failed", "done", "done"]
    assert results[2].size == (16, 12) and Image.open(jobs[2].output).size == (16, 12)


def test_stop_finishes_the_current_file_and_reports_the_rest_as_not_started(tmp_path: Path) -> None:
    jobs = make_jobs(tmp_path, 5)
    options = RunOptions()

    class StopAfterFirst(Bilinear):
        def upscale_tensor(self, x, progress=None):
            options.stop.set()  # as the first Ctrl-C would, while this file is in the model
            return super().upscale_tensor(x)

    results: list[FileResult] = []
    not_started = run_batch(StopAfterFirst(), jobs, results.append, options)
    assert [r.status for r in results] == ["done"] and not_started == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png"]


def test_a_failing_result_callback_aborts_the_run_and_surfaces(tmp_path: Path) -> None:
    jobs = make_jobs(tmp_path, 3)

    def broken(result: FileResult) -> None:
        raise BrokenPipeError("stdout closed")

    with pytest.raises(BrokenPipeError):
        run_batch(Bilinear(), jobs, broken)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


def test_a_model_error_costs_one_file(tmp_path: Path) -> None:
    jobs = make_jobs(tmp_path, 3)

    class OutOfMemoryOnce(Bilinear):
        seen = 0

        def upscale_tensor(self, x, progress=None):
            self.seen += 1
            if self.seen == 2:  # the second file
                raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore detail")
            return super().upscale_tensor(x)

    results: list[FileResult] = []
    run_batch(OutOfMemoryOnce(), jobs, results.append)
    assert [r.status for r in results] == ["done", "failed", "done"]
    assert results[1].error == f"{jobs[1].source}: upscaling failed (CUDA out of memory. Tried to allocate 20.00 GiB)"


def test_an_output_that_cannot_hold_the_image_fails_before_upscaling(tmp_path: Path) -> None:
    frames = [Image.fromarray(gradient(6, 6)).rotate(90 * i) for i in range(2)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    upscaler = Bilinear()
    results: list[FileResult] = []
    run_batch(upscaler, [Job(tmp_path / "anim.gif", tmp_path / "anim.jpg")], results.append)
    assert results[0].status == "failed" and "JPEG cannot hold the 2 frames" in (results[0].error or "")
    assert upscaler.calls == 0


def test_an_identical_existing_output_is_done_only_when_asked(tmp_path: Path) -> None:
    """A Ray task retried after its worker died finds the file its first attempt wrote: with
    identical_is_done that is the job done; a different file there is still refused."""
    source = tmp_path / "a.png"
    Image.fromarray(gradient(8, 8)).save(source)
    job = Job(source, tmp_path / "a_x2.png")
    assert process_job(Bilinear(), job).status == "done"
    first = job.output.read_bytes()
    again = process_job(Bilinear(), job, RunOptions(identical_is_done=True))
    assert (again.status, again.error, again.size) == ("done", None, (16, 16))
    assert job.output.read_bytes() == first
    assert process_job(Bilinear(), job).status == "failed"  # the default: exists, pass --overwrite
    job.output.write_bytes(first[:-1] + b"\0")  # someone else's file
    different = process_job(Bilinear(), job, RunOptions(identical_is_done=True))
    assert different.status == "failed" and "exists" in (different.error or "")
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))
