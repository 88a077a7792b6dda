"""`python -m cfgedu sample --checkpoint DIR --w W --n N --out grid.png`: a class-by-row grid of CFG samples."""
from __future__ import annotations

from pathlib import Path

from ..core.samplers import METHODS
from ..engine.config import PRECISIONS
from ._paths import IMAGE_SUFFIXES, output_image
from ._threads import DEFAULT_THREADS, add_threads_argument, set_threads

HELP = ("Sample a trained image model with classifier-free guidance (paper's w; diffusers' scale s = 1 + w) using "
        "Algorithm 2 or DDIM, one doubled (cond + null) batch per step, and save a grid with one row per class.")


def add_arguments(parser):
    parser.add_argument("--checkpoint", type=Path, required=True, help="training folder (or its checkpoint.pt)")
    parser.add_argument("--w", type=float, default=0.0, help="guidance strength w (w = 0: conditional model)")
    parser.add_argument("--n", type=int, default=10, help="samples per class (columns of the grid)")
    parser.add_argument("--out", type=Path, required=True,
                        help=f"image file for the grid ({', '.join(IMAGE_SUFFIXES)})")
    parser.add_argument("--steps", type=int, default=128, help="sampling steps T")
    parser.add_argument("--method", choices=METHODS, default="ancestral",
                        help="sampler: Algorithm 2 (ancestral) or a deterministic ODE solver (ddim; heun and dpm++2m, "
                             "second order); NFE = steps, 2·steps − 2 for heun")
    parser.add_argument("--v", type=float, default=0.3, help="variance exponent v of Algorithm 2 (SPEC 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument("--batch-size", type=int, default=500, help="images per sampling batch")
    parser.add_argument("--classes", type=int, default=None, help="only the first K classes (default: all)")
    parser.add_argument("--raw", action="store_true", help="EMA off: sample the raw trained weights")
    add_precision_argument(parser)
    add_threads_argument(parser, DEFAULT_THREADS)


def add_precision_argument(parser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="the network's arithmetic while sampling: bf16 autocast (on CUDA and on CPUs with bf16 "
                             "instructions) or fp32; the sampler stays fp32. None: the precision the run trained at")


def run(args) -> None:
    from ..core.guidance import check_w
    from ..core.tensors import default_device
    from ..engine.runs import load_checkpoint_model, run_precision
    from ..frontend.plotting import save_grid
    from ..images.sampling import class_labels, sample_images

    output_image(args.out)
    set_threads(args.threads)
    check_w(args.w)
    model = load_checkpoint_model(args.checkpoint, use_ema=not args.raw, kinds=("unet",)).to(default_device())
    classes = model.num_classes if args.classes is None else args.classes
    if not 1 <= classes <= model.num_classes:
        raise ValueError(f"--classes must be in 1..{model.num_classes}, got {classes}")
    images = sample_images(model, class_labels(classes, args.n), args.w, steps=args.steps, seed=args.seed,
                           method=args.method, v=args.v, batch_size=args.batch_size,
                           precision=args.precision or run_precision(args.checkpoint), progress=True)
    save_grid(images, classes, args.out)
    print(f"wrote {args.out}: {classes} classes x {args.n} samples at w = {args.w:g} (s = {1 + args.w:g})")

