"""`python -m cfgedu fields --checkpoint RUN --out DIR`: how far from a gradient is the CFG field?"""
from __future__ import annotations

from pathlib import Path

from ._paths import output_folder
from .figure2 import TOY_KINDS

# Grid points per side: finite differences need 3 and say little below 8; memory grows as grid² (measured peak:
# 0.6 GB at 96, 1.5 GB at 256, 4.8 GB at 512, 12+ GB at 1024).
GRID_SIDES = (8, 512)

HELP = ("Measure how far the CFG field (1 + w)·ε(z, c) − w·ε(z, ∅) (s = 1 + w) is from a gradient, for the exact "
        "mixture and a learned toy model: relative curl (autograd and finite differences), circulation, "
        "Helmholtz–Hodge rotational energy fraction and the implicit-classifier error; writes fields.json and plots.")


def add_arguments(parser):
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a toy run folder from toy-train (or its checkpoint.pt, or an older model.pt)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for fields.json and the plots")
    parser.add_argument("--w", type=float, nargs="+", default=[0.0, 1.0, 3.0], help="guidance strengths (paper's w)")
    parser.add_argument("--lam", type=float, nargs="+", default=[-4.0, 0.0, 4.0], help="log-SNR levels λ")
    parser.add_argument("--class", dest="label", type=int, default=0, help="the guided class c")
    parser.add_argument("--grid", type=int, default=96,
                        help=f"grid points per side over [−3, 3]², in [{GRID_SIDES[0]}, {GRID_SIDES[1]}]")


def run(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ..core.checks import check_in_range
    from ..core.guidance import check_w
    from ..core.io import atomic_savefig, atomic_write_json
    from ..engine.runs import load_checkpoint_model
    from ..frontend.plotting import plot_curl_panels, plot_helmholtz
    from ..toy.fields import as_float64, cfg_field, fields_table
    from ..toy.grid import Grid2D, grid_values
    from ..toy.helmholtz import helmholtz_hodge
    from ..toy.mixture import GaussianMixture

    output_folder(args.out)
    check_in_range("--grid (points per side)", args.grid, *GRID_SIDES)
    args.w = [check_w(w) for w in args.w]
    mixture = GaussianMixture.three_gaussians()
    learned = load_checkpoint_model(args.checkpoint, kinds=TOY_KINDS)
    grid = Grid2D(3.0, args.grid)
    rows = fields_table({"exact": mixture, "learned": learned}, mixture, args.w, args.lam, args.label, grid)
    atomic_write_json({"checkpoint": str(args.checkpoint), "class": args.label, "grid": grid.to_dict(), "rows": rows},
                      args.out / "fields.json")
    curl = plot_curl_panels(learned, args.w, args.lam, args.label, grid,
                            title=f"learned {args.checkpoint}: curl of the CFG field")
    atomic_savefig(curl, args.out / "curl.png", dpi=110)
    w_max, lam_mid = max(args.w), sorted(args.lam)[len(args.lam) // 2]
    split = helmholtz_hodge(grid_values(cfg_field(as_float64(learned), lam_mid, args.label, w_max), grid), grid)
    atomic_savefig(plot_helmholtz(split), args.out / "helmholtz.png", dpi=110)
    for row in rows:
        print(f"{row['model']:>7}  w = {row['w']:g}  λ = {row['lambda']:+g}  relative curl {row['relative_curl']:.2e}  "
              f"circulation {row['circulation']:+.2e}  rotational energy {row['rotational_energy_fraction']:.2e}")
    print(f"wrote {args.out / 'fields.json'}, {args.out / 'curl.png'} and {args.out / 'helmholtz.png'}")
