"""`python -m cfgedu evaluate --checkpoint DIR --w 0 0.1 0.3 1 2 4 --out DIR2`: the paper's FID/IS sweep over w."""
from __future__ import annotations

from pathlib import Path

HELP = ("Sample every class at each guidance strength w (s = 1 + w) and measure classifier accuracy, FID and IS "
        "with a protocol's feature extractor (digits: a small CNN; FID against the validation split), beside the "
        "real-data FID floor; writes eval.json, eval.md and a sample grid per w.")

# protocol name -> "module:function" taking the image size and returning a cfgedu.image_eval.EvalProtocol
PROTOCOLS = {"digits": "cfgedu.classifier:digits_protocol"}


def add_arguments(parser):
    parser.add_argument("--checkpoint", type=Path, required=True, help="training folder (or its checkpoint.pt)")
    parser.add_argument("--w", type=float, nargs="+", default=[0.0, 0.1, 0.3, 1.0, 2.0, 4.0],
                        help="guidance strengths w (paper's convention; s = 1 + w)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="digits", help="features and references")
    parser.add_argument("--per-class", type=int, default=100, help="samples per class for FID/IS/accuracy")
    parser.add_argument("--steps", type=int, default=128, help="sampling steps T")
    parser.add_argument("--method", choices=("ancestral", "ddim"), default="ancestral", help="sampler")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise and the floor subsets")
    parser.add_argument("--batch-size", type=int, default=500, help="images per sampling batch")
    parser.add_argument("--floor-repeats", type=int, default=5, help="real subsets averaged for the FID floor")
    parser.add_argument("--grid-columns", type=int, default=10, help="samples per class shown in each grid")


def run(args) -> None:
    import importlib

    from ..image_eval import evaluate_guidance, markdown_table
    from ..image_sampling import save_grid
    from ..io import atomic_write_json
    from ..tensors import default_device
    from ..training import load_checkpoint_model

    model = load_checkpoint_model(args.checkpoint).to(default_device())
    module_name, function_name = PROTOCOLS[args.protocol].split(":")
    protocol = getattr(importlib.import_module(module_name), function_name)(model.config.image_size)
    result, samples = evaluate_guidance(model, args.w, protocol, per_class=args.per_class, steps=args.steps,
                                        seed=args.seed, method=args.method, batch_size=args.batch_size,
                                        floor_repeats=args.floor_repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json({"checkpoint": str(args.checkpoint), **result}, args.out / "eval.json")
    table = markdown_table(result["rows"], result["fid_floor"])
    (args.out / "eval.md").write_text(table)
    columns = min(args.grid_columns, args.per_class)
    for w, images in samples.items():
        shown = images.reshape(protocol.num_classes, args.per_class, *images.shape[1:])[:, :columns]
        save_grid(shown.reshape(-1, *images.shape[1:]), protocol.num_classes, args.out / f"samples_w{w:g}.png")
    print(table)
