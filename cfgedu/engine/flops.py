"""Model size and cost: parameters and forward FLOPs, with multiply and add counted separately.

torch.utils.flop_counter.FlopCounterMode counts 2 FLOPs per multiply-accumulate of convolutions, matmuls
and attention (normalisations and activations are not counted), the convention of SPEC 7.2 where ADM-64
costs 219.4 GFLOP per forward. Networks can be built on the meta device, so counting ADM-64 allocates nothing.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..nets.registry import network_class

TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward ≈ 3 forwards (SPEC 9)


def count_parameters(model: torch.nn.Module) -> int:
    """The number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def forward_flops(model: torch.nn.Module, batch: int = 1) -> float:
    """FLOPs of one forward per image of an image eps_model, counted on a meta-device twin built from its config.

    The twin matters: on a real CPU, SDPA runs a fused kernel that FlopCounterMode does not count.
    """
    with torch.device("meta"):
        twin = type(model)(model.config)
        z = torch.zeros((batch, *model.config.data_shape))
        lam, c = torch.zeros(batch), torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        twin(z, lam, c)
    return counter.get_total_flops() / batch


def describe_experiment(experiment) -> dict:
    """The resolved experiment config with `parameters` and `forward_gflops` (network built on the meta device)."""
    with torch.device("meta"):
        model = network_class(experiment.kind)(experiment.model)
    gflops = forward_flops(model) / 1e9
    return {**experiment.to_dict(), "parameters": count_parameters(model), "forward_gflops": gflops,
            "train_gflops_per_image": TRAIN_FLOPS_PER_FORWARD * gflops}
