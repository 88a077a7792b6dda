"""`python -m cfgedu toy-tradeoff`: the paper's Tables 1-2 in miniature on the toy, and what CFG samples."""
from __future__ import annotations

from pathlib import Path

from ._paths import output_folder

HELP = ("Sweep the guidance strength w (paper's w; scale s = 1 + w), p_uncond of learned toy MLPs and the number "
        "of sampling steps T; write tradeoff.csv, Markdown tables shaped like the paper's Tables 1-2, the "
        "FD-vs-IS plot and boundary-push histograms. Learned models are trained once and cached in OUT/models.")


def add_arguments(parser):
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--fast", action="store_true", help="a CI-sized sweep (about a minute)")
    parser.add_argument("--train-steps", type=int, default=None, help="training steps of each learned MLP")
    parser.add_argument("--seed", type=int, default=None, help="seed of training and sampling")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (the toy's tensors are small: one thread is fastest on a busy machine)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args) -> None:
    import matplotlib
    import torch

    matplotlib.use("Agg")
    from ..toy.tradeoff import SweepConfig, learned_models, run_sweep, with_overrides, write_outputs

    output_folder(args.out)
    torch.set_num_threads(args.threads)
    base = SweepConfig.fast() if args.fast else SweepConfig()
    config = with_overrides(base, train_steps=args.train_steps, seed=args.seed)
    progress = not args.no_progress
    models = learned_models(args.out, config, progress=progress)
    sweep = run_sweep(config, models, progress=progress)
    paths = write_outputs(sweep, args.out)
    print(paths["md"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}; sweep {sweep.seconds:.0f} s")
