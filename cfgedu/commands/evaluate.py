"""`python -m cfgedu evaluate --checkpoint DIR --w 0 0.1 0.3 1 2 4 --out DIR2`: the paper's FID/IS sweep over w."""
from __future__ import annotations

from pathlib import Path

from ._paths import output_folder

HELP = ("Sample every class at each guidance strength w (s = 1 + w) and measure classifier accuracy, FID and IS "
        "with a protocol's feature extractor (digits: a small CNN; FID against the validation split), beside the "
        "real-data FID floor; writes eval.json, eval.md and a sample grid per w.")

# protocol name -> "module:function" taking the image size and returning a cfgedu.images.evaluation.EvalProtocol
PROTOCOLS = {"digits": "cfgedu.images.digits_classifier:digits_protocol"}


def add_arguments(parser):
    parser.add_argument("--checkpoint", type=Path, required=True, help="training folder (or its checkpoint.pt)")
    parser.add_argument("--w", type=float, nargs="+", default=[0.0, 0.1, 0.3, 1.0, 2.0, 4.0],
                        help="guidance strengths w (paper's convention; s = 1 + w)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--protocol", choices=sorted([*PROTOCOLS, "imagenet"]), default="digits",
                        help="features and references (imagenet: Inception FID/IS, see --inception)")
    parser.add_argument("--per-class", type=int, default=100, help="samples per class for FID/IS/accuracy")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps T (default 128; imagenet 256)")
    parser.add_argument("--method", choices=("ancestral", "ddim"), default="ancestral", help="sampler")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise and the floor subsets")
    parser.add_argument("--batch-size", type=int, default=500, help="images per sampling batch")
    parser.add_argument("--floor-repeats", type=int, default=5, help="real subsets averaged for the FID floor")
    parser.add_argument("--grid-columns", type=int, default=10, help="samples per class shown in each grid")
    parser.add_argument("--inception", type=Path, default=None,
                        help="ImageNet 64x64 (Table 1): the Inception weights weights-inception-2015-12-05-6726825d.pth "
                             "(or set CFGEDU_INCEPTION_WEIGHTS and pass --protocol imagenet); runs under torchrun")
    parser.add_argument("--n", type=int, default=50_000, help="imagenet: class-balanced samples per w")
    parser.add_argument("--reference", type=Path, default=None,
                        help="imagenet: ADM-style mu/sigma .npz (default: statistics of the run's prepared data)")


def check_digits_fit(model) -> None:
    """The digits protocol scores 1-channel 8/16/32-pixel digits of 10 classes; any other network is refused."""
    from ..data.digits import NUM_CLASSES, SIZES

    shape = tuple(getattr(model.config, "data_shape", ()))
    if model.num_classes == NUM_CLASSES and shape in {(1, size, size) for size in SIZES}:
        return
    takes = f"{'x'.join(map(str, shape))} images" if len(shape) == 3 else "points, not images,"
    raise ValueError(f"this checkpoint's network takes {takes} with {model.num_classes} classes; the digits protocol "
                     f"needs 1-channel {'/'.join(map(str, SIZES))}-pixel digits with {NUM_CLASSES} classes: "
                     f"use --protocol imagenet --inception PATH for an ImageNet 64x64 checkpoint")


def run(args) -> None:
    import importlib

    from ..core.guidance import check_w
    from ..images.evaluation import evaluate_guidance, markdown_table
    from ..images.sampling import save_grid
    from ..core.io import atomic_write_json, atomic_write_text
    from ..core.tensors import default_device
    from ..engine.runs import load_checkpoint_model

    output_folder(args.out)
    args.w = [check_w(w) for w in args.w]
    if args.inception is not None or args.protocol == "imagenet":
        from ..images.inception import evaluate_run, write_evaluation

        result = evaluate_run(args.checkpoint, args.w, args.n, inception=args.inception, reference=args.reference,
                              steps=args.steps or 256, seed=args.seed, batch_size=args.batch_size)
        print(write_evaluation(result, args.out, args.checkpoint))
        return
    args.steps = args.steps or 128
    model = load_checkpoint_model(args.checkpoint).to(default_device())
    if args.protocol == "digits":
        check_digits_fit(model)
    module_name, function_name = PROTOCOLS[args.protocol].split(":")
    protocol = getattr(importlib.import_module(module_name), function_name)(model.config.image_size)
    result, samples = evaluate_guidance(model, args.w, protocol, per_class=args.per_class, steps=args.steps,
                                        seed=args.seed, method=args.method, batch_size=args.batch_size,
                                        floor_repeats=args.floor_repeats)
    atomic_write_json({"checkpoint": str(args.checkpoint), **result}, args.out / "eval.json")
    table = markdown_table(result["rows"], result["fid_floor"])
    atomic_write_text(table, args.out / "eval.md")
    columns = min(args.grid_columns, args.per_class)
    for w, images in samples.items():
        shown = images.reshape(protocol.num_classes, args.per_class, *images.shape[1:])[:, :columns]
        save_grid(shown.reshape(-1, *images.shape[1:]), protocol.num_classes, args.out / f"samples_w{w:g}.png")
    print(table)
