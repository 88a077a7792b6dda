"""Throughput of an image eps_model on the current device: training and sampling images/s (unguided, and with CFG's
doubled batch), the cost of that doubled batch against two forwards, peak memory and, on CUDA, model-FLOPs
utilisation against the bf16 peak. The network runs as training and sampling run it: at the config's precision
(cfgedu.core.tensors.autocast), sampling under inference_mode with float32 outputs."""
from __future__ import annotations

import resource
import time

import torch

from ..core.guidance import guided
from ..core.losses import diffusion_loss
from ..core.tensors import at_precision, autocast, bf16_supported
from .flops import TRAIN_FLOPS_PER_FORWARD, count_parameters, forward_flops

# dense bf16 peaks in FLOP/s by device-name substring (SPEC 9 for the H100)
BF16_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, repeats: int, device: torch.device) -> float:
    """Seconds per call of fn(), after one untimed warm-up call."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def _inputs(model, batch: int, device: torch.device, generator: torch.Generator,
            memory_format: torch.memory_format = torch.contiguous_format):
    z = torch.randn((batch, *model.config.data_shape), generator=generator, device=device)
    z = z.contiguous(memory_format=memory_format) if z.ndim == 4 else z
    lam = torch.rand(batch, generator=generator, device=device) * 40 - 20
    return z, lam, torch.randint(0, model.num_classes, (batch,), generator=generator, device=device)


def train_step_seconds(model, batch: int, steps: int, device: torch.device, precision: str,
                       memory_format: torch.memory_format = torch.contiguous_format) -> float:
    """Seconds per AdamW step of Algorithm 1's loss on random images of the model's shape."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)
    x, _, c = _inputs(model, batch, device, generator, memory_format)

    def step():
        with autocast(device, precision):
            loss = diffusion_loss(model, x.clamp(-1, 1), c, p_uncond=0.1, num_classes=model.num_classes,
                                  generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    return _timed(step, steps, device)


@torch.inference_mode()
def forward_seconds(model, batch: int, repeats: int, device: torch.device, precision: str,
                    memory_format: torch.memory_format = torch.contiguous_format) -> dict:
    """Seconds of the network in one sampling step: unguided (B), guided (one doubled batch 2B) and two B forwards."""
    model.eval()
    z, lam, c = _inputs(model, batch, device, torch.Generator(device=device).manual_seed(1), memory_format)
    null = torch.full_like(c, model.num_classes)
    network = at_precision(model, precision)
    cfg_model = guided(network, 1.0, null_label=model.num_classes)
    return {"single": _timed(lambda: network(z, lam, c), repeats, device),
            "doubled": _timed(lambda: cfg_model(z, lam, c), repeats, device),
            "separate": _timed(lambda: (network(z, lam, c), network(z, lam, null)), repeats, device)}


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated tensor memory; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAKS.items() if key in name), None)


def benchmark(model: torch.nn.Module, *, batch_size: int, train_steps: int = 3, repeats: int = 3,
              sampling_steps: int = 128, device: torch.device | str = "cpu", compile: bool = False,
              channels_last: bool = False, precision: str = "fp32") -> dict:
    """Training and sampling throughput, the CFG doubled-batch ratio, size, GFLOPs, peak memory and MFU.

    compile, channels_last and precision are the training options of the same names (bf16 runs where
    bf16_supported(device), else fp32); with compile, the untimed warm-up call of each timed function pays the
    compilation.
    """
    device = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    gflops = forward_flops(model) / 1e9
    if compile:
        model = torch.compile(model)
    precision = precision if precision == "fp32" or bf16_supported(device) else "fp32"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_s = train_step_seconds(model, batch_size, train_steps, device, precision, memory_format)
    forward = forward_seconds(model, batch_size, repeats, device, precision, memory_format)
    train_ips = batch_size / train_s
    peak = bf16_peak(device)
    return {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "precision": "bf16 autocast" if precision == "bf16" else "fp32",
        "compile": compile, "channels_last": channels_last,
        "batch_size": batch_size, "parameters": count_parameters(model), "forward_gflops": gflops,
        "train_images_per_s": train_ips,
        "sampling_images_per_s": batch_size / (forward["doubled"] * sampling_steps),
        "unguided_sampling_images_per_s": batch_size / (forward["single"] * sampling_steps),
        "sampling_steps": sampling_steps,
        "cfg_doubled_batch_s": forward["doubled"], "cfg_two_forwards_s": forward["separate"],
        "cfg_doubled_over_two_forwards": forward["doubled"] / forward["separate"],
        "peak_memory_mb": peak_memory_mb(device),
        "mfu": None if peak is None else TRAIN_FLOPS_PER_FORWARD * gflops * 1e9 * train_ips / peak,
    }
