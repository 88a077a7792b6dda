"""`python -m cfgedu COMMAND ...`: each command lives in cfgedu/commands/<name>.py with HELP,
add_arguments(parser) and run(args). Bad arguments and bad paths give a one-line message and exit status 2;
warnings are one line each."""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable

COMMANDS = {
    "figure2": "cfgedu.commands.figure2",
    "train": "cfgedu.commands.train",
    "describe": "cfgedu.commands.describe",
    "sample": "cfgedu.commands.sample",
    "evaluate": "cfgedu.commands.evaluate",
    "bench": "cfgedu.commands.bench",
    "prepare-imagenet64": "cfgedu.commands.prepare_imagenet64",
    "bench-widgets": "cfgedu.commands.bench_widgets",
    "bench-figure2": "cfgedu.commands.bench_figure2",
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


def error_line(error: Exception) -> str:
    """An error as one line: "PATH: reason" for an operating-system error on a path, else its message."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    return " ".join(str(error).split())


def one_line_warnings(command: str) -> Callable[..., None]:
    """A warnings.showwarning that prints each distinct warning once, as `cfgedu COMMAND: warning: message`."""
    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if str(message) not in shown:
            shown.add(str(message))
            print(f"cfgedu {command}: warning: {message}", file=sys.stderr)
    return show


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = one_line_warnings(args.command)
        try:
            args.run(args)
        except (ValueError, OSError) as error:
            print(f"cfgedu {args.command}: error: {error_line(error)}", file=sys.stderr)
            return 2
    return 0


def console_main() -> None:
    sys.exit(main())
