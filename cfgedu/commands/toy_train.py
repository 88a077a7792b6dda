"""`python -m cfgedu toy-train --out DIR`: learn the toy's scores with Algorithm 1 and measure them against ε*."""
from __future__ import annotations

from pathlib import Path

from ._paths import output_folder

HELP = ("Train the three-Gaussian toy's ε-MLP (or its energy-parameterised, conservative twin) with Algorithm 1 "
        "through the shared training loop, then write DIR/model.pt (EMA weights), DIR/config.json and "
        "DIR/metrics.json with the relative ε errors against the exact ε* (conditional and unconditional).")


def add_arguments(parser):
    from ..toy.learned import MODELS, TOY_TRAIN

    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--model", choices=MODELS, default="mlp",
                        help="mlp: ε = σ(κz + α·F(z, λ, c)), free to curl; energy: ε = σ·∇_z U(z, λ, c), "
                             "a gradient by construction")
    parser.add_argument("--p-uncond", type=float, default=0.1, help="label dropout probability of Algorithm 1")
    parser.add_argument("--steps", type=int, default=TOY_TRAIN["steps"], help="optimisation steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of every draw")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> None:
    import torch

    from ..toy.learned import write_toy_run

    output_folder(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    metrics = write_toy_run(args.out, model=args.model, p_uncond=args.p_uncond, steps=args.steps, seed=args.seed,
                            progress=not args.no_progress)
    print(f"{args.model}: relative ε error {metrics['eps_rel_error_cond']:.2e} (cond), "
          f"{metrics['eps_rel_error_uncond']:.2e} (uncond) after {metrics['train_seconds']:.1f} s of training; "
          f"wrote {args.out / 'model.pt'}")
