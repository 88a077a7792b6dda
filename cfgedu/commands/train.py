"""`python -m cfgedu train --preset NAME --out DIR [--resume] [--key value ...]`, also under
`torchrun --nproc_per_node=N -m cfgedu train ...`. Running the same command again resumes DIR/checkpoint.pt."""
from __future__ import annotations

from pathlib import Path

from ._overrides import collect_overrides, override_pairs
from ._paths import output_folder

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
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads per process (0: PyTorch's default); 1 is fastest for tiny models on a "
                             "busy machine")
    collect_overrides(parser)


def run(args) -> None:
    import os

    from ..core.configs import apply_overrides

    from ..engine.presets import preset
    from ..engine.experiment import train_experiment

    output_folder(args.out)  # before anything is built
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    experiment = apply_overrides(preset(args.preset), override_pairs(args.overrides))
    try:
        result = train_experiment(experiment, args.out, preset_name=args.preset, require_checkpoint=args.resume,
                                  progress=not args.no_progress)
    except FloatingPointError as error:  # a diverged run: one line, like every other CLI error
        raise ValueError(str(error)) from None
    if os.environ.get("RANK", "0") != "0":
        return
    if result.resumed_from == result.step:
        print(f"nothing to do: {args.out} already holds step {result.step} (--steps {result.step}); nothing was "
              f"written (ask for more --steps to continue it)")
    else:
        print(f"trained to step {result.step} in {result.seconds:.1f} s; wrote {args.out / 'checkpoint.pt'}")
