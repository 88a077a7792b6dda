"""`python -m cfgedu COMMAND ...`: each command lives in cfgedu/commands/<name>.py with HELP,
add_arguments(parser) and run(args). Bad arguments give a one-line message and exit status 2."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "figure2": "cfgedu.commands.figure2",
    "train": "cfgedu.commands.train",
    "describe": "cfgedu.commands.describe",
    "sample": "cfgedu.commands.sample",
    "evaluate": "cfgedu.commands.evaluate",
    "bench": "cfgedu.commands.bench",
    "prepare-imagenet64": "cfgedu.commands.prepare_imagenet64",
    "bench-widgets": "cfgedu.commands.bench_widgets",
    "toy-train": "cfgedu.commands.toy_train",
    "fields": "cfgedu.commands.fields",
    "toy-tradeoff": "cfgedu.commands.toy_tradeoff",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cfgedu",
        description="cfgedu: classifier-free diffusion guidance (Ho & Salimans 2022), from exact 2D scores to "
                    "ImageNet 64x64. Guidance strength is the paper's w (w = 0: conditional model; s = 1 + w is "
                    "the scale used by diffusers/Imagen).")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP,
                                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"cfgedu {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


def console_main() -> None:
    sys.exit(main())
