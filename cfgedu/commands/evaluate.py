"""`python -m cfgedu evaluate --checkpoint DIR --w 0 0.1 0.3 1 2 4 --out DIR2`: the paper's FID/IS sweep over w."""
from __future__ import annotations

from pathlib import Path

from ..core.samplers import METHODS
from ..images.digits_classifier import digits_protocol
from ..images.inception import imagenet_protocol
from ._paths import output_folder
from ._threads import DEFAULT_THREADS, add_threads_argument, set_threads
from .sample import add_precision_argument

HELP = ("Sample every class at each guidance strength w (s = 1 + w) and measure FID and IS with a protocol's feature "
        "extractor (digits: a small CNN, which also gives the accuracy of the requested class, FID against the "
        "validation split beside the real-data floor; imagenet: Inception, beside the paper's Table 1); writes "
        "eval.json, eval.md and a sample grid per w. Runs under torchrun, each process taking its share.")

# protocol name -> a function of the parsed arguments returning a cfgedu.images.evaluation.Protocol
PROTOCOLS = {
    "digits": lambda args: digits_protocol(),
    "imagenet": lambda args: imagenet_protocol(args.inception, args.reference, args.data),
}


def add_arguments(parser):
    parser.add_argument("--checkpoint", type=Path, required=True, help="training folder (or its checkpoint.pt)")
    parser.add_argument("--w", type=float, nargs="+", default=[0.0, 0.1, 0.3, 1.0, 2.0, 4.0],
                        help="guidance strengths w (paper's convention; s = 1 + w)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default=None,
                        help="features and references (default digits, or imagenet when --inception is given)")
    parser.add_argument("--per-class", type=int, default=None,
                        help="samples per class and per w (default: digits 100; imagenet 50, 50,000 in all)")
    parser.add_argument("--n", type=int, default=None,
                        help="class-balanced samples per w in all (default: per-class times the classes)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps T (default: digits 128; imagenet 256)")
    parser.add_argument("--method", choices=METHODS, default="ancestral",
                        help="sampler: Algorithm 2 (ancestral) or a deterministic ODE solver (ddim; heun and dpm++2m, "
                             "second order); NFE = steps, 2·steps − 2 for heun")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise and the floor subsets")
    parser.add_argument("--batch-size", type=int, default=500, help="images per sampling batch")
    add_precision_argument(parser)
    parser.add_argument("--floor-repeats", type=int, default=5, help="real subsets averaged for the FID floor")
    parser.add_argument("--grid-columns", type=int, default=10, help="samples per class shown in each grid")
    parser.add_argument("--grid-classes", type=int, default=10, help="classes (rows) shown in each grid")
    parser.add_argument("--inception", type=Path, default=None,
                        help="imagenet: the Inception weights weights-inception-2015-12-05-6726825d.pth (or set "
                             "CFGEDU_INCEPTION_WEIGHTS and pass --protocol imagenet)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="imagenet: ADM-style mu/sigma .npz (default: statistics of the run's prepared data)")
    parser.add_argument("--data", type=Path, default=None,
                        help="imagenet: prepared data whose training split gives the reference (default: the run's)")
    add_threads_argument(parser, DEFAULT_THREADS)


def run(args) -> None:
    from ..core.guidance import check_w
    from ..frontend.plotting import save_grid
    from ..images.evaluation import evaluate_checkpoint, write_evaluation

    output_folder(args.out)
    set_threads(args.threads)
    ws = [check_w(w) for w in args.w]
    protocol = PROTOCOLS[args.protocol or ("imagenet" if args.inception else "digits")](args)
    evaluation = evaluate_checkpoint(args.checkpoint, protocol, ws, n=args.n, per_class=args.per_class,
                                     steps=args.steps, seed=args.seed, method=args.method, batch_size=args.batch_size,
                                     precision=args.precision,
                                     floor_repeats=args.floor_repeats, grid=(args.grid_classes, args.grid_columns))
    print(write_evaluation(evaluation, args.out))
    for w, images in evaluation.grids.items():  # rank 0's samples, one row per class
        save_grid(images.flatten(0, 1), len(images), args.out / f"samples_w{w:g}.png")
