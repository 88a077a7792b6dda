"""ADM-64 on one GPU: training and CFG sampling throughput of the imagenet64 preset for each speed lever.

    python benchmarks/adm64_gpu.py                       # every variant, JSON to benchmarks/results/<gpu>.json
    python benchmarks/adm64_gpu.py --variants eager,compile_blocks
    python benchmarks/adm64_gpu.py --reference-factory ~/gd_factory.py:build   # + a reference network, timed
    python benchmarks/adm64_gpu.py --tiny --out /tmp/tiny.json                  # the imagenet64-tiny preset on CPU

Training is the real loop (cfgedu.engine.loop.train) at per-device batch 64 under the preset's bf16 autocast, on
random images; sampling is the real sampler (Algorithm 2, CFG with one doubled batch per step) for a batch of 256
images at T = 256, under inference_mode, timed over a few steps and scaled to T. Each variant runs in a process of
its own (with a time limit, so a compilation that does not finish is recorded as such); results are merged into
the JSON by name, so the variants can be run in several calls. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing cfgedu

from cfgedu.core.guidance import guided  # noqa: E402
from cfgedu.core.samplers import sample  # noqa: E402
from cfgedu.core.tensors import at_precision, autocast, make_generator  # noqa: E402
from cfgedu.data.source import TensorData  # noqa: E402
from cfgedu.engine import loop  # noqa: E402
from cfgedu.engine.bench import bf16_peak  # noqa: E402
from cfgedu.engine.experiment import build_network  # noqa: E402
from cfgedu.engine.flops import TRAIN_FLOPS_PER_FORWARD, forward_flops  # noqa: E402
from cfgedu.engine.presets import preset  # noqa: E402
from cfgedu.nets.unet import Attention, ResBlock  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    channels_last: bool = False
    sdpa: str | None = None  # None: PyTorch's choice; else a torch.nn.attention.SDPBackend name
    compile: str | None = None  # None, "blocks" (each ResBlock and Attention in place) or "whole"
    compile_mode: str | None = None  # torch.compile's mode, e.g. "reduce-overhead" (CUDA graphs)
    ema: str = "foreach"  # "foreach" (the loop's update_ema) or "loop" (one lerp_ per parameter)


VARIANTS = [
    Variant("eager"),
    Variant("channels_last", channels_last=True),
    Variant("sdpa_flash", sdpa="FLASH_ATTENTION"),
    Variant("sdpa_efficient", sdpa="EFFICIENT_ATTENTION"),
    Variant("sdpa_cudnn", sdpa="CUDNN_ATTENTION"),
    Variant("sdpa_math", sdpa="MATH"),
    Variant("ema_per_parameter", ema="loop"),
    Variant("compile_blocks", compile="blocks"),
    Variant("compile_blocks_channels_last", compile="blocks", channels_last=True),
    Variant("compile_whole", compile="whole"),
    Variant("compile_whole_cudagraphs", compile="whole", compile_mode="reduce-overhead"),
]
TINY_VARIANTS = "eager,channels_last,sdpa_math,ema_per_parameter"  # no compilation: seconds on a CPU


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every variant measures: the preset, the batches, the steps timed."""

    preset: str = "imagenet64"
    device: str = "cuda"
    train_batch: int = 64
    warmup_steps: int = 5  # one log window, paying any compilation
    timed_steps: int = 20
    sampling_images: int = 256
    sampling_T: int = 256
    sampling_timed_steps: int = 8


TINY_SETUP = Setup(preset="imagenet64-tiny", device="cpu", train_batch=2, warmup_steps=1, timed_steps=1,
                   sampling_images=2, sampling_T=256, sampling_timed_steps=1)


# ---- the levers ---------------------------------------------------------------------------------------------------

def compile_blocks(model: nn.Module, mode: str | None) -> None:
    """Regional compilation: each repeated block compiled in place, so the state-dict keys stay the eager ones."""
    for block in model.modules():
        if isinstance(block, ResBlock | Attention):
            block.compile(mode=mode)


@torch.no_grad()
def ema_per_parameter(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """The EMA update before the foreach one: one lerp_ per parameter."""
    for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        ema_param.lerp_(param, 1 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


@contextlib.contextmanager
def ema_update(kind: str):
    """The training loop with its own EMA update ("foreach") or the per-parameter one ("loop")."""
    foreach = loop.update_ema
    loop.update_ema = ema_per_parameter if kind == "loop" else foreach
    try:
        yield
    finally:
        loop.update_ema = foreach


def sdpa_context(backend: str | None):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, backend)) if backend else contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


# ---- one variant --------------------------------------------------------------------------------------------------

def random_data(model: nn.Module, n: int) -> TensorData:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((n, *model.config.data_shape), generator=generator) * 2 - 1
    return TensorData(x, torch.randint(0, model.num_classes, (n,), generator=generator), model.num_classes)


def measure_training(model: nn.Module, variant: Variant, setup: Setup, precision: str) -> dict:
    """The training loop's images/s after its first log window, and what that first window cost beyond it."""
    steps = setup.warmup_steps + setup.timed_steps
    config = dataclasses.replace(
        preset(setup.preset).train, steps=steps, batch_size=setup.train_batch, per_device_batch=0, grad_accum=1,
        warmup_steps=0, log_every=setup.warmup_steps, checkpoint_every=0, device=setup.device,
        channels_last=variant.channels_last, compile=variant.compile == "whole", precision=precision)
    if variant.compile == "blocks":
        compile_blocks(model, variant.compile_mode)
    started = time.perf_counter()
    with ema_update(variant.ema):
        result = loop.train(model, random_data(model, 4 * setup.train_batch), config, kind="unet", progress=False)
    seconds = time.perf_counter() - started
    steady = [record["images_per_s"] for record in result.history[1:]]
    images_per_s = sorted(steady)[len(steady) // 2] if steady else setup.train_batch * steps / seconds
    return {"train_images_per_s": images_per_s,
            "train_compile_seconds": max(0.0, seconds - steps * setup.train_batch / images_per_s),
            "model": result.model}  # as trained: channels_last, blocks compiled


@torch.inference_mode()
def sampling_step_seconds(network, model: nn.Module, setup: Setup, precision: str, steps: int) -> float:
    """Seconds of `steps` steps of Algorithm 2 with CFG (one doubled batch per step) for sampling_images images."""
    device = next(model.parameters()).device
    eps_model = guided(at_precision(network, precision), 1.0, null_label=model.num_classes)
    labels = torch.arange(setup.sampling_images, device=device) % model.num_classes
    synchronize(device)
    started = time.perf_counter()
    sample(eps_model, model.config.data_shape, labels, generator=make_generator(0, device), steps=steps, clip_x=1.0)
    synchronize(device)
    return time.perf_counter() - started


def measure_sampling(model: nn.Module, variant: Variant, setup: Setup, precision: str) -> dict:
    """Images/s at T = sampling_T from sampling_timed_steps steps, after untimed steps that pay any compilation."""
    model.eval()
    network = torch.compile(model, mode=variant.compile_mode) if variant.compile == "whole" else model
    first = sampling_step_seconds(network, model, setup, precision, 2)
    timed = sampling_step_seconds(network, model, setup, precision, setup.sampling_timed_steps)
    per_step = timed / setup.sampling_timed_steps
    return {"sampling_images_per_s": setup.sampling_images / (per_step * setup.sampling_T),
            "sampling_step_seconds": per_step, "sampling_compile_seconds": max(0.0, first - 2 * per_step)}


def mfu(flops_per_s: float, peak: float | None) -> float | None:
    return None if peak is None else flops_per_s / peak


def measure_variant(variant: Variant, setup: Setup) -> dict:
    """Every figure of one variant: throughput, MFU against the bf16 peak, peak memory, compile seconds."""
    device = torch.device(setup.device)
    experiment = preset(setup.preset)
    torch.manual_seed(0)
    model = build_network(experiment)
    flops = forward_flops(model)
    with sdpa_context(variant.sdpa):
        reset_peak(device)
        train = measure_training(model, variant, setup, experiment.train.precision)
        train_peak = peak_mb(device)
        reset_peak(device)
        sampling = measure_sampling(train.pop("model"), variant, setup, experiment.train.precision)
    peak = bf16_peak(device)
    sampling_flops_per_s = 2 * flops * setup.sampling_images / sampling["sampling_step_seconds"]  # doubled batch
    return {**dataclasses.asdict(variant), **train, **sampling,
            "train_mfu": mfu(TRAIN_FLOPS_PER_FORWARD * flops * train["train_images_per_s"], peak),
            "sampling_mfu": mfu(sampling_flops_per_s, peak),
            "peak_memory_mb": train_peak, "sampling_peak_memory_mb": peak_mb(device),
            "compile_seconds": (train["train_compile_seconds"] + sampling["sampling_compile_seconds"]
                                if variant.compile else None)}


def run_isolated(variant: Variant, args) -> dict:
    """measure_variant in a child process, killed after args.variant_timeout seconds."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "variant.json"
        command = [sys.executable, __file__, "--only", variant.name, "--only-out", str(out)]
        try:
            done = subprocess.run(command, timeout=args.variant_timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {"name": variant.name, "error": f"did not finish within {args.variant_timeout} s"}
        if done.returncode or not out.exists():
            return {"name": variant.name, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
        return json.loads(out.read_text())


def run_in_process(variant: Variant, setup: Setup) -> dict:
    try:
        return measure_variant(variant, setup)
    except Exception as error:  # a lever this device lacks (e.g. an SDPA backend) is recorded, not fatal
        return {"name": variant.name, "error": f"{type(error).__name__}: {error}"}


# ---- the reference network, timed in one harness beside ours -----------------------------------------------------

def load_factory(spec: str):
    """FILE:FUNCTION → the function, imported from a file outside this repository."""
    path, _, name = spec.rpartition(":")
    module_spec = importlib.util.spec_from_file_location("reference_factory", Path(path).expanduser())
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def harness_images_per_s(module: nn.Module, inputs: tuple, setup: Setup) -> float:
    """One plain training step (bf16 autocast forward, mean square of the output, backward, fused AdamW) repeated:
    the same harness for both networks, so their ratio compares the networks alone."""
    device = torch.device(setup.device)
    module.to(device).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step():
        with autocast(device, "bf16"):
            loss = module(*inputs).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(setup.warmup_steps):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(setup.timed_steps):
        step()
    synchronize(device)
    return setup.train_batch * setup.timed_steps / (time.perf_counter() - started)


def reference_columns(spec: str | None, setup: Setup) -> dict:
    """guided_diffusion_train_images_per_s (null without --reference-factory) beside ours in the same harness."""
    if spec is None:
        return {"guided_diffusion_train_images_per_s": None}
    device = torch.device(setup.device)
    reference, reference_inputs = load_factory(spec)(setup.train_batch, device)
    theirs = harness_images_per_s(reference, reference_inputs, setup)
    torch.manual_seed(0)
    ours_model = build_network(preset(setup.preset))
    generator = torch.Generator().manual_seed(0)
    ours_inputs = (torch.randn((setup.train_batch, *ours_model.config.data_shape), generator=generator),
                   torch.rand(setup.train_batch, generator=generator) * 40 - 20,
                   torch.randint(0, ours_model.num_classes, (setup.train_batch,), generator=generator))
    ours = harness_images_per_s(ours_model, tuple(t.to(device) for t in ours_inputs), setup)
    return {"guided_diffusion_train_images_per_s": theirs, "ours_in_the_same_harness_train_images_per_s": ours,
            "ours_over_guided_diffusion": ours / theirs}


# ---- the report ---------------------------------------------------------------------------------------------------

def device_name(setup: Setup) -> str:
    return torch.cuda.get_device_name() if setup.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def default_out(setup: Setup, tiny: bool) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", device_name(setup).lower()).strip("-")
    return RESULTS / f"{slug}{'-tiny' if tiny else ''}.json"


def merged(previous: dict, report: dict) -> dict:
    """The new report, keeping the previous file's variants that were not measured again on the same device."""
    if previous.get("device") != report["device"]:
        return report
    names = {row["name"] for row in report["variants"]}
    kept = [row for row in previous.get("variants", []) if row["name"] not in names]
    reference = {k: v for k, v in previous.items() if k.startswith(("guided_", "ours_")) and v is not None}
    return {**report, **{k: v for k, v in reference.items() if report.get(k) is None},
            "variants": kept + report["variants"]}


def report_header(setup: Setup, argv: list[str]) -> dict:
    model = build_network(preset(setup.preset))
    peak = bf16_peak(torch.device(setup.device))
    return {"device": device_name(setup), "torch": torch.__version__, "preset": setup.preset,
            "command": " ".join(["python", "benchmarks/adm64_gpu.py", *argv]),
            "per_device_batch": setup.train_batch, "precision": preset(setup.preset).train.precision,
            "sampling": {"images": setup.sampling_images, "doubled_batch": 2 * setup.sampling_images,
                         "T": setup.sampling_T, "timed_steps": setup.sampling_timed_steps},
            "forward_gflops": forward_flops(model) / 1e9, "bf16_peak_tflops": None if peak is None else peak / 1e12}


def parse(argv: list[str]):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the imagenet64-tiny preset on the CPU, in process")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated names (default: all; --tiny: {TINY_VARIANTS}); "
                             f"known: {', '.join(v.name for v in VARIANTS)}")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/<gpu>.json)")
    parser.add_argument("--variant-timeout", type=int, default=420, help="seconds a variant may take, compile included")
    parser.add_argument("--reference-factory", default=None,
                        help="FILE:FUNCTION outside this repository: FUNCTION(batch, device) -> (module, inputs), "
                             "the reference network and its inputs (see benchmarks/README.md)")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # a child process: one variant
    parser.add_argument("--only-out", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    setup = TINY_SETUP if args.tiny else Setup()
    known = {variant.name: variant for variant in VARIANTS}
    if args.only:
        row = measure_variant(known[args.only], setup)
        args.only_out.write_text(json.dumps(row))
        return row
    names = (args.variants or (TINY_VARIANTS if args.tiny else ",".join(known))).split(",")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(known)}")
    rows = [run_in_process(known[n], setup) if args.tiny else run_isolated(known[n], args) for n in names]
    report = {**report_header(setup, argv), **reference_columns(args.reference_factory, setup), "variants": rows}
    out = args.out or default_out(setup, args.tiny)
    report = merged(json.loads(out.read_text()) if out.exists() else {}, report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
