"""`python -m cfgedu describe --preset NAME`: the resolved config, parameter count and forward GFLOPs as JSON."""
from __future__ import annotations

HELP = ("Print a preset's resolved configuration (network, data, training) as JSON with its parameter count and "
        "forward GFLOPs per image (multiply and add counted separately); the network is built on the meta device.")


def add_arguments(parser):
    parser.add_argument("--preset", required=True, help="named experiment (see cfgedu.config.PRESETS)")


def run(args) -> None:
    import json

    from ..config import preset
    from ..flops import describe_experiment

    print(json.dumps({"preset": args.preset, **describe_experiment(preset(args.preset))}, indent=2))
