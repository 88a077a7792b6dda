"""`python -m cfgedu toy-train --out DIR`: learn the toy's scores with Algorithm 1 and measure them against ε*; or,
with --model classifier, learn the noisy classifier that classifier guidance needs and measure it against p_λ(c|z)."""
from __future__ import annotations

from pathlib import Path

from ._overrides import collect_overrides, override_pairs
from ._paths import output_folder
from ._threads import TOY_THREADS, add_threads_argument, set_threads
from .train import train_and_report

HELP = ("Train the three-Gaussian toy's ε-MLP (or its energy-parameterised, conservative twin) with Algorithm 1: the "
        "toy preset through the shared training engine, into the same run folder as `train` (DIR/checkpoint.pt, "
        "config.json, metrics.jsonl; rerunning resumes). Then write DIR/eps_error.json with the relative ε errors "
        "of the EMA weights against the exact ε* (conditional and unconditional). --model classifier trains the noisy "
        "classifier p(c | z_λ, λ) of classifier guidance instead (cross-entropy on the same forward process, labels "
        "never dropped) and writes DIR/classifier_accuracy.json: its accuracy and log-loss per λ beside the exact "
        "posterior's. The EMA decay follows --steps (1 - 20/steps, at most 0.995); any other config field can be set "
        "as --key value (e.g. --width 64).")

PRESET_NAMES = {"mlp": "toy", "energy": "toy-energy", "classifier": "toy-classifier"}


def add_arguments(parser):
    from ..engine.presets import CLASSIFIER_STEPS, TOY_STEPS

    parser.add_argument("--out", type=Path, required=True, help="output folder (a run folder)")
    parser.add_argument("--model", choices=tuple(PRESET_NAMES), default="mlp",
                        help="mlp: ε = σ(κz + α·F(z, λ, c)), free to curl; energy: ε = σ·∇_z U(z, λ, c), "
                             "a gradient by construction; classifier: logits of p(c | z_λ, λ), for classifier guidance")
    parser.add_argument("--p-uncond", type=float, default=None,
                        help="label dropout probability of Algorithm 1 (default 0.1; the classifier drops none)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"optimisation steps (default {TOY_STEPS}; the classifier {CLASSIFIER_STEPS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of every draw")
    add_threads_argument(parser, TOY_THREADS)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    collect_overrides(parser)


def run(args) -> None:
    from ..engine.presets import toy_experiment

    if args.model == "classifier" and args.p_uncond is not None:
        raise ValueError("--p-uncond does not apply to --model classifier: a noisy classifier sees every label")
    output_folder(args.out)
    set_threads(args.threads)
    dropout = {} if args.p_uncond is None else {"p_uncond": args.p_uncond}
    experiment = toy_experiment(args.model, args.steps, seed=args.seed, **dropout, **override_pairs(args.overrides))
    result = train_and_report(experiment, args.out, PRESET_NAMES[args.model], progress=not args.no_progress)
    (_report_classifier if args.model == "classifier" else _report_eps)(result, args)


def _report_classifier(result, args) -> None:
    """DIR/classifier_accuracy.json: accuracy and log-loss per λ of the EMA classifier and of the exact posterior."""
    from ..core.io import atomic_write_json
    from ..toy.classifiers import classifier_table, exact_classifier
    from ..toy.fields import as_float64
    from ..toy.mixture import GaussianMixture

    mixture = GaussianMixture.three_gaussians()
    rows = classifier_table({"exact": exact_classifier(mixture), "classifier": as_float64(result.ema.eval())}, mixture)
    atomic_write_json({"rows": rows, "step": result.step}, args.out / "classifier_accuracy.json")
    for row in rows:
        print(f"{row['model']:>10}  λ = {row['lambda']:+g}  accuracy {row['accuracy']:.4f}  "
              f"log-loss {row['log_loss']:.4f}")
    print(f"wrote {args.out / 'classifier_accuracy.json'}")


def _report_eps(result, args) -> None:
    """DIR/eps_error.json: the relative ε errors of the EMA weights against the exact ε*."""
    from ..core.io import atomic_write_json
    from ..toy.learned import eps_relative_errors
    from ..toy.mixture import GaussianMixture

    errors = eps_relative_errors(result.ema.eval(), GaussianMixture.three_gaussians())
    atomic_write_json({"eps_rel_error_cond": errors["cond"], "eps_rel_error_uncond": errors["uncond"],
                       "step": result.step}, args.out / "eps_error.json")
    print(f"{args.model}: relative ε error {errors['cond']:.2e} (cond), {errors['uncond']:.2e} (uncond); "
          f"wrote {args.out / 'eps_error.json'}")
