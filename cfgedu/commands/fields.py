"""`python -m cfgedu fields --checkpoint RUN --out DIR`: how far from a gradient is the CFG field?"""
from __future__ import annotations

from pathlib import Path

from ._paths import output_folder
from ._threads import TOY_THREADS, add_threads_argument, set_threads
from .figure2 import TOY_KINDS

# Grid points per side: finite differences need 3 and say little below 8; memory grows as grid² (measured peak:
# 0.6 GB at 96, 1.5 GB at 256, 4.8 GB at 512, 12+ GB at 1024).
GRID_SIDES = (8, 512)

HELP = ("Measure how far the CFG field (1 + w)·ε(z, c) − w·ε(z, ∅) (s = 1 + w) is from a gradient, for the exact "
        "mixture and a learned toy model: relative curl (autograd and finite differences, beside the "
        "finite-difference floor of the exact field), circulation, Helmholtz–Hodge rotational energy fraction and the "
        "implicit-classifier error; writes fields.json and plots. With --classifier, also the classifier-guidance "
        "field ε*(z, c) − w·σ·∇log p(c|z) of a trained noisy classifier (rows \"classifier\"), and classifiers.json: "
        "accuracy and log-loss per λ of the exact posterior, the trained classifier and the learned model's "
        "implicit classifier, on the same noised draws.")

# What each model's rows in fields.json measure.
FIELDS = {"exact": "(1 + w)·ε*(z, c) − w·ε*(z, ∅), the exact mixture",
          "learned": "(1 + w)·ε_θ(z, c) − w·ε_θ(z, ∅), the learned model (CFG)",
          "classifier": "ε*(z, c) − w·σ·∇_z log p_φ(c|z): classifier guidance of the exact ε* by the trained "
                        "classifier"}
# The classifiers of classifiers.json (cfgedu.toy.classifiers).
CLASSIFIERS = {"exact": "the mixture's posterior p_λ(c|z): Bayes-optimal",
               "classifier": "the trained noisy classifier p_φ(c | z_λ, λ) (EMA weights)",
               "implicit": "p(c|z) = π_c p_θ(z|c) / Σ_c' π_c' p_θ(z|c'), p_θ(z|c) ∝ exp φ_c on a grid, ∇φ_c the "
                           "Helmholtz–Hodge gradient part of the learned score −ε_θ(z, c)/σ (our construction)"}


def add_arguments(parser):
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a toy run folder from toy-train (or its checkpoint.pt, or an older model.pt)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for fields.json and the plots")
    parser.add_argument("--w", type=float, nargs="+", default=[0.0, 1.0, 3.0], help="guidance strengths (paper's w)")
    parser.add_argument("--lam", type=float, nargs="+", default=[-4.0, 0.0, 4.0], help="log-SNR levels λ")
    parser.add_argument("--class", dest="label", type=int, default=0, help="the guided class c")
    parser.add_argument("--grid", type=int, default=96,
                        help=f"grid points per side over [−3, 3]², in [{GRID_SIDES[0]}, {GRID_SIDES[1]}]")
    parser.add_argument("--classifier", type=Path, default=None,
                        help="a run folder from `toy-train --model classifier`: adds its classifier-guidance rows "
                             "and writes classifiers.json")
    add_threads_argument(parser, TOY_THREADS)


def run(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ..core.checks import check_in_range
    from ..core.guidance import check_w
    from ..core.io import atomic_savefig, atomic_write_json
    from ..engine.runs import load_checkpoint_model
    from ..frontend.plotting import plot_curl_panels, plot_helmholtz
    from ..toy.fields import as_float64, cfg_field, classifier_guidance_fields, fields_table
    from ..toy.grid import Grid2D, grid_values
    from ..toy.helmholtz import helmholtz_hodge
    from ..toy.mixture import GaussianMixture

    output_folder(args.out)
    set_threads(args.threads)
    check_in_range("--grid (points per side)", args.grid, *GRID_SIDES)
    args.w = [check_w(w) for w in args.w]
    mixture = GaussianMixture.three_gaussians()
    learned = load_checkpoint_model(args.checkpoint, kinds=TOY_KINDS)
    classifier = load_checkpoint_model(args.classifier, kinds=("classifier",)) if args.classifier else None
    grid = Grid2D(3.0, args.grid)
    models = {"exact": mixture, "learned": learned}
    if classifier is not None:
        models["classifier"] = classifier_guidance_fields(classifier, mixture)
    rows = fields_table(models, mixture, args.w, args.lam, args.label, grid)
    atomic_write_json({"checkpoint": str(args.checkpoint), "classifier": args.classifier and str(args.classifier),
                       "class": args.label, "grid": grid.to_dict(), "fields": {name: FIELDS[name] for name in models},
                       "rows": rows}, args.out / "fields.json")
    run_name = (args.checkpoint if args.checkpoint.is_dir() else args.checkpoint.parent).resolve().name
    curl = plot_curl_panels(learned, args.w, args.lam, args.label, grid,
                            title=f"learned ({run_name}): curl of the CFG field", mixture=mixture)
    atomic_savefig(curl, args.out / "curl.png", dpi=110)
    w_max, lam_mid = max(args.w), sorted(args.lam)[len(args.lam) // 2]
    split = helmholtz_hodge(grid_values(cfg_field(as_float64(learned), lam_mid, args.label, w_max), grid), grid)
    atomic_savefig(plot_helmholtz(split), args.out / "helmholtz.png", dpi=110)
    for row in rows:
        print(f"{row['model']:>10}  w = {row['w']:g}  λ = {row['lambda']:+g}  "
              f"relative curl {row['relative_curl']:.2e}  FD {row['relative_curl_fd']:.2e} "
              f"(floor {row['relative_curl_fd_floor']:.2e})  "
              f"circulation {row['circulation']:+.2e}  rotational energy {row['rotational_energy_fraction']:.2e}")
    print(f"wrote {args.out / 'fields.json'}, {args.out / 'curl.png'} and {args.out / 'helmholtz.png'}")
    if classifier is not None:
        _write_classifiers(mixture, learned, classifier, args.out)


def _write_classifiers(mixture, learned, classifier, out: Path) -> None:
    """classifiers.json: accuracy and log-loss per λ of the exact, trained and implicit classifiers."""
    from ..core.io import atomic_write_json
    from ..toy.classifiers import ImplicitClassifier, classifier_table, exact_classifier
    from ..toy.fields import as_float64

    classifiers = {"exact": exact_classifier(mixture), "classifier": as_float64(classifier),
                   "implicit": ImplicitClassifier(learned, mixture.class_weights)}
    rows = classifier_table(classifiers, mixture)
    atomic_write_json({"models": CLASSIFIERS, "rows": rows}, out / "classifiers.json")
    for row in rows:
        print(f"{row['model']:>10}  λ = {row['lambda']:+g}  accuracy {row['accuracy']:.4f}  "
              f"log-loss {row['log_loss']:.4f}")
    print(f"wrote {out / 'classifiers.json'}")
