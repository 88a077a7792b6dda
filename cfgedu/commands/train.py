"""`python -m cfgedu train --preset NAME --out DIR [--resume] [--key value ...]`, also under
`torchrun --nproc_per_node=N -m cfgedu train ...`. Running the same command again resumes DIR/checkpoint.pt."""
from __future__ import annotations

from pathlib import Path

from ._overrides import collect_overrides, override_pairs
from ._paths import output_folder
from ._threads import DEFAULT_THREADS, add_threads_argument, set_threads

HELP = ("Train a preset's network with Algorithm 1 (label dropout, λ ~ p(λ), ε-MSE), AdamW, warm-up, clipping, "
        "EMA, atomic checkpoints and exact resume; any config field can be overridden as --key value "
        "(e.g. --steps 1000 --lr 1e-4 --model.width 64). Runs under torchrun for DDP.")


def add_arguments(parser):
    from ..engine.presets import PRESETS

    parser.add_argument("--preset", required=True, help=f"named experiment: {', '.join(sorted(PRESETS))}")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: checkpoint.pt, metrics.jsonl and config.json")
    parser.add_argument("--resume", action="store_true",
                        help="require DIR/checkpoint.pt and continue it (an existing checkpoint is resumed anyway)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_argument(parser, DEFAULT_THREADS)
    collect_overrides(parser)


def run(args) -> None:
    from ..core.configs import apply_overrides
    from ..engine.presets import preset

    output_folder(args.out)  # before anything is built
    set_threads(args.threads)
    train_and_report(apply_overrides(preset(args.preset), override_pairs(args.overrides)), args.out, args.preset,
                     resume=args.resume, progress=not args.no_progress)


def train_and_report(experiment, out: Path, preset_name: str, *, resume: bool = False, progress: bool = True):
    """Train or resume the experiment in `out` and say on rank 0 what was done; returns the TrainResult."""
    import os

    from ..engine.experiment import train_experiment

    try:
        result = train_experiment(experiment, out, preset_name=preset_name, require_checkpoint=resume,
                                  progress=progress)
    except FloatingPointError as error:  # a diverged run: one line, like every other CLI error
        raise ValueError(str(error)) from None
    if os.environ.get("RANK", "0") != "0":
        return result
    if result.resumed_from == result.step:
        print(f"nothing to do: {out} already holds step {result.step} (--steps {result.step}); nothing was "
              f"written (ask for more --steps to continue it)")
    else:
        print(f"trained to step {result.step} in {result.seconds:.1f} s; wrote {out / 'checkpoint.pt'}")
    return result
