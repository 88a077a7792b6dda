"""`python -m cfgedu describe --preset NAME [--key value ...]`: the resolved config, parameter count and forward
GFLOPs as JSON."""
from __future__ import annotations

from ._overrides import collect_overrides, override_pairs

HELP = ("Print a preset's resolved configuration (network, data, training) as JSON with its parameter count and "
        "forward GFLOPs per image (multiply and add counted separately); the network is built on the meta device. "
        "Config fields can be overridden as in train, e.g. --model.channel_mult 1,2,2.")


def add_arguments(parser):
    parser.add_argument("--preset", required=True, help="named experiment (see cfgedu.engine.presets.PRESETS)")
    collect_overrides(parser)


def run(args) -> None:
    import json

    from ..core.configs import apply_overrides
    from ..engine.flops import describe_experiment
    from ..engine.presets import preset

    experiment = apply_overrides(preset(args.preset), override_pairs(args.overrides))
    print(json.dumps({"preset": args.preset, **describe_experiment(experiment)}, indent=2))
