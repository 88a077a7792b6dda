"""`python -m cfgedu figure2`: the paper's Figure 2 from exact scores, with CFG samples beside it."""
from __future__ import annotations

from pathlib import Path

from ._paths import output_folder
from ._threads import TOY_THREADS, add_threads_argument, set_threads

TOY_KINDS = ("mlp", "energy")  # the 2D networks a toy command can take

HELP = ("Reproduce Figure 2 (three Gaussians, guided conditionals at increasing w) from exact scores, and "
        "sample each panel with Algorithm 2 to measure the total-variation distance to the tilted target.")


def add_arguments(parser):
    parser.add_argument("--out", type=Path, required=True, help="output folder for figure2.png and figure2.json")
    parser.add_argument("--w", type=float, nargs="+", default=[1.0, 4.0, 16.0],
                        help="guidance strengths of the guided panels (paper's w; scale s = 1 + w)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument("--samples-per-class", type=int, default=20_000, help="Algorithm 2 samples per class")
    parser.add_argument("--steps", type=int, default=256, help="sampling steps T")
    parser.add_argument("--v", type=float, default=0.3, help="variance interpolation exponent v in [0, 1]")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a toy run folder from toy-train (or its checkpoint.pt, or an older model.pt): adds a row "
                             "of CFG samples from the learned scores")
    add_threads_argument(parser, TOY_THREADS)


def run(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ..core.guidance import check_w
    from ..core.io import atomic_savefig, atomic_write_json
    from ..engine.runs import load_checkpoint_model
    from ..frontend.plotting import plot_figure2
    from ..toy.figure2 import compute_figure2
    from ..toy.mixture import GaussianMixture

    output_folder(args.out)
    set_threads(args.threads)
    args.w = [check_w(w) for w in args.w]
    learned = {"learned": load_checkpoint_model(args.checkpoint, kinds=TOY_KINDS)} if args.checkpoint else {}
    result = compute_figure2(GaussianMixture.three_gaussians(), args.w, samples_per_class=args.samples_per_class,
                             steps=args.steps, v=args.v, seed=args.seed, learned=learned)
    atomic_savefig(plot_figure2(result), args.out / "figure2.png", dpi=120)
    atomic_write_json(result.to_dict(), args.out / "figure2.json")
    for panel in result.to_dict()["panels"]:
        tvs = ", ".join(f"{c['tv_sampler_to_target']:.3f} (floor {c['tv_noise_floor']:.3f})" for c in panel["classes"])
        print(f"w = {panel['w']:g}: TV of exact-score CFG samples to the target per class: {tvs}")
        if learned:
            tvs = ", ".join(f"{c['tv_learned_to_target']:.3f}" for c in panel["classes"])
            print(f"        TV of learned-score CFG samples to the target per class: {tvs}")
    print(f"wrote {args.out / 'figure2.png'} and {args.out / 'figure2.json'} in {result.seconds:.1f} s")
