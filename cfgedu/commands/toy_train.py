"""`python -m cfgedu toy-train --out DIR`: learn the toy's scores with Algorithm 1 and measure them against ε*."""
from __future__ import annotations

from pathlib import Path

from ._overrides import collect_overrides, override_pairs
from ._paths import output_folder
from .train import set_threads, train_and_report

HELP = ("Train the three-Gaussian toy's ε-MLP (or its energy-parameterised, conservative twin) with Algorithm 1: the "
        "toy preset through the shared training engine, into the same run folder as `train` (DIR/checkpoint.pt, "
        "config.json, metrics.jsonl; rerunning resumes). Then write DIR/eps_error.json with the relative ε errors "
        "of the EMA weights against the exact ε* (conditional and unconditional). The EMA decay follows --steps "
        "(1 - 20/steps, at most 0.995); any other config field can be set as --key value (e.g. --width 64).")


def add_arguments(parser):
    from ..engine.presets import TOY_STEPS

    parser.add_argument("--out", type=Path, required=True, help="output folder (a run folder)")
    parser.add_argument("--model", choices=("mlp", "energy"), default="mlp",
                        help="mlp: ε = σ(κz + α·F(z, λ, c)), free to curl; energy: ε = σ·∇_z U(z, λ, c), "
                             "a gradient by construction")
    parser.add_argument("--p-uncond", type=float, default=0.1, help="label dropout probability of Algorithm 1")
    parser.add_argument("--steps", type=int, default=TOY_STEPS, help="optimisation steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of every draw")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    collect_overrides(parser)


def run(args) -> None:
    from ..core.io import atomic_write_json
    from ..engine.presets import toy_experiment
    from ..toy.learned import eps_relative_errors
    from ..toy.mixture import GaussianMixture

    output_folder(args.out)
    set_threads(args.threads)
    experiment = toy_experiment(args.model, args.steps, p_uncond=args.p_uncond, seed=args.seed,
                                **override_pairs(args.overrides))
    preset_name = "toy" if args.model == "mlp" else "toy-energy"
    result = train_and_report(experiment, args.out, preset_name, progress=not args.no_progress)
    errors = eps_relative_errors(result.ema.eval(), GaussianMixture.three_gaussians())
    atomic_write_json({"eps_rel_error_cond": errors["cond"], "eps_rel_error_uncond": errors["uncond"],
                       "step": result.step}, args.out / "eps_error.json")
    print(f"{args.model}: relative ε error {errors['cond']:.2e} (cond), {errors['uncond']:.2e} (uncond); "
          f"wrote {args.out / 'eps_error.json'}")
