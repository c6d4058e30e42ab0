"""``hat train``: train or fine-tune a HAT on folders of HR images (library: :mod:`hat_cli.train`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..train import TrainProgress
from .console import err_console, print_line, print_warning
from .options import FOLDER, DeviceOpt, QuietOpt, ThreadsOpt

DEFAULT_ARCH = "hat-tiny"


def _eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes:02d}:{sec:02d}"


def train(
    hr: Annotated[list[Path], typer.Option("--hr", help="Folder of HR training images; repeat for several.", **FOLDER)],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="FILE",
            help="Checkpoint to write (.pth official layout, or .safetensors).",
            show_default=False,
        ),
    ],
    scale: Annotated[int, typer.Option("--scale", "-s", help="Upscaling factor (2, 3, 4 or 8).")] = 4,
    init: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--init",
            metavar="FILE|NAME",
            help="Fine-tune from this checkpoint file or preset (e.g. hat-s); arch from it.",
        ),
    ] = None,
    arch: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--arch",
            metavar="SPEC",
            help="Architecture of a fresh model: family/preset name and/or key=value pairs, e.g. "
            "'embed_dim=48,depths=2x3,num_heads=4x3,window_size=8' (2x3 = three groups of two blocks; "
            f"or 2/4/2). Default: {DEFAULT_ARCH}.",
        ),
    ] = None,
    iters: Annotated[int, typer.Option("--iters", min=1, help="Total iterations (including resumed ones).")] = 10_000,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Patches per iteration.")] = 16,
    patch_size: Annotated[
        int,
        typer.Option(
            "--patch-size",
            min=1,
            help="HR patch side in pixels (a multiple of the scale); the LR patch is patch/scale, "
            "fastest as a multiple of the window size.",
        ),
    ] = 128,
    lr: Annotated[float, typer.Option("--lr", help="Peak Adam learning rate.")] = 2e-4,
    schedule: Annotated[
        str,
        typer.Option(
            "--schedule", metavar="cosine|step", help="Learning-rate decay: cosine, or step (halve at 50/80/90/95%)."
        ),
    ] = "cosine",
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Linear warm-up iterations.")] = 0,
    ema_decay: Annotated[float, typer.Option("--ema-decay", help="EMA decay of the saved weights.")] = 0.999,
    seed: Annotated[int, typer.Option("--seed", help="Seed for init, patch sampling and augmentation.")] = 0,
    val_hr: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--val-hr", help="HR folder for validation PSNR (Y, as 'hat bench').", **FOLDER),
    ] = None,
    val_every: Annotated[
        int, typer.Option("--val-every", min=0, help="Validate every N iterations (0: end only).")
    ] = 1000,
    save_every: Annotated[int, typer.Option("--save-every", min=0, help="Checkpoint every N iterations.")] = 500,
    resume: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--resume", help="Continue from a <out>.state.pth written by an earlier run.", dir_okay=False),
    ] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train or fine-tune a HAT on HR images (L1, Adam, EMA; LR made with MATLAB bicubic).

    Writes --out (official params_ema/params layout, loadable by every hat command) and, next to it, <stem>.state.pth to resume. Ctrl-C saves both before exiting.
    """
    from ..api import resolve_device  # torch and the trainer load only when the command runs
    from ..threads import set_threads
    from ..train import TrainOptions, check_options, check_outputs, parse_arch, state_path_for
    from ..train import train as run_training

    check_outputs(out, state_path_for(out))  # before anything is loaded or drawn: no work lost

    if init is not None and arch is not None:
        raise ConfigError("give --init (fine-tune, arch from the checkpoint) or --arch (fresh model), not both")
    options = TrainOptions(
        hr_dirs=hr,
        out=out,
        scale=scale,
        init=init,
        iters=iters,
        batch_size=batch_size,
        patch_size=patch_size,
        lr=lr,
        schedule=schedule,  # type: ignore[arg-type]
        warmup_iters=warmup,
        ema_decay=ema_decay,
        seed=seed,
        val_hr=val_hr,
        val_every=val_every,
        save_every=save_every,
        resume=resume,
    )
    check_options(options)  # the scale first: --arch is built for it
    if init is None and resume is None:
        options.config = parse_arch(arch or DEFAULT_ARCH, scale)
    options.device = str(resolve_device(device))
    options.threads = set_threads(threads)  # default: the cores this process may use, as every command
    progress, on_progress = _display(iters, quiet)
    try:
        result = run_training(options, on_progress, print_warning)
    except KeyboardInterrupt as exc:
        _stop(progress)
        if getattr(exc, "checkpoint_saved", False):  # not when stopped while the data was still loading
            print_line(
                f"saved {out} and {state_path_for(out)}; continue with the same command plus --resume "
                f"{state_path_for(out)}"
            )
        raise
    finally:
        _stop(progress)
    if not quiet:
        psnr = "" if result.val_psnr is None else f", validation PSNR {result.val_psnr:.3f} dB"
        print_line(
            f"wrote {result.out} ({result.iterations} iterations, {result.wall_s / 60:.1f} min{psnr}); "
            f"resume state {result.state}",
            err=False,
        )


def _stop(progress: Progress) -> None:
    """End the bar if it started (stopping one that never did would still print a blank line)."""
    if progress.live.is_started:
        progress.stop()


def _display(iters: int, quiet: bool) -> tuple[Progress, Callable[[TrainProgress], None]]:
    """The live bar (a terminal) or one status line per checkpoint (a log), and its callback.

    The bar starts with the first iteration: an error while the data loads stays one line."""
    progress = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "{task.fields[rate]} it/s  ETA {task.fields[eta]}  loss {task.fields[loss]}  val {task.fields[val]}"
        ),
        TimeElapsedColumn(),
        console=err_console,
        disable=quiet,
    )
    task = progress.add_task("train", total=iters, rate="-", eta="--:--", loss="-", val="-")

    def on_progress(p: TrainProgress) -> None:
        progress.start()  # a no-op once started
        progress.update(
            task,
            completed=p.iteration,
            rate=f"{p.its_per_sec:.2f}",
            eta=_eta(p.eta_s),
            loss=f"{p.loss:.4f}",
            val="-" if p.val_psnr is None else f"{p.val_psnr:.2f} dB",
        )
        if quiet:
            return
        if p.event == "val":
            progress.console.print(f"iteration {p.iteration}: validation PSNR {p.val_psnr:.3f} dB", highlight=False)
        elif p.event == "save" and not err_console.is_terminal:
            # No live bar in a log file (nohup, CI): one status line per checkpoint instead.
            progress.console.print(
                f"iteration {p.iteration}/{p.total}: loss {p.loss:.4f}, lr {p.lr:.2e}, "
                f"{p.its_per_sec:.2f} it/s, ETA {_eta(p.eta_s)}, checkpoint saved",
                highlight=False,
            )

    return progress, on_progress
