"""`python -m cfgedu bench --preset NAME`: training and sampling throughput of a preset's network here."""
from __future__ import annotations

from ._overrides import collect_overrides, override_pairs
from ._threads import DEFAULT_THREADS, add_threads_argument, set_threads

HELP = ("Benchmark a preset's network on this device (CUDA if available): training images/s, sampling images/s "
        "(unguided, and with CFG's doubled batch), one doubled-batch CFG forward against two forwards, parameters, "
        "forward GFLOPs, peak memory and, on CUDA, model-FLOPs utilisation against the bf16 peak. Config fields can "
        "be overridden as in train; the training options --compile, --channels_last and --precision apply here too.")


def add_arguments(parser):
    parser.add_argument("--preset", required=True, help="named experiment (see cfgedu.engine.presets.PRESETS)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per step (default: the preset's per-device batch on CUDA, 2 on CPU for "
                             "networks above 100 GFLOP, else 64)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards (after one warm-up)")
    parser.add_argument("--sampling-steps", type=int, default=128, help="T used to turn step time into images/s")
    add_threads_argument(parser, DEFAULT_THREADS)
    collect_overrides(parser)


def default_batch(experiment, device, gflops: float) -> int:
    if device.type == "cuda":
        return experiment.train.per_device_batch or min(experiment.train.batch_size, 256)
    return 2 if gflops > 100 else 64


def run(args) -> None:
    import json

    from ..core.checks import check_positive_int
    from ..core.configs import apply_overrides
    from ..core.tensors import default_device
    from ..engine.bench import benchmark
    from ..engine.experiment import build_network
    from ..engine.flops import forward_flops
    from ..engine.presets import preset

    set_threads(args.threads)
    experiment = apply_overrides(preset(args.preset), override_pairs(args.overrides))
    device = default_device()
    model = build_network(experiment)
    batch = args.batch_size or default_batch(experiment, device, forward_flops(model) / 1e9)
    result = benchmark(model, batch_size=check_positive_int("batch-size", batch), train_steps=args.steps,
                       repeats=args.repeats, sampling_steps=args.sampling_steps, device=device,
                       compile=experiment.train.compile, channels_last=experiment.train.channels_last,
                       precision=experiment.train.precision)
    print(json.dumps({"preset": args.preset, **result}, indent=2))
