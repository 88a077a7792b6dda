"""bf16 autocast on the CPU, float32 sampler state under it, compiled against eager networks, and checkpoints of a
compiled run."""
import dataclasses
import json
from functools import partial

import pytest
import torch
from threads import one_thread  # noqa: F401 (autouse)
from torch import nn

from cfgedu.core.guidance import guided
from cfgedu.core.samplers import sample
from cfgedu.core.tensors import at_precision, autocast, bf16_supported, cpu_has_bf16
from cfgedu.data.toy import MixtureSamples
from cfgedu.engine.config import TrainConfig
from cfgedu.engine.loop import train
from cfgedu.engine.runs import CHECKPOINT, load_checkpoint_model, run_precision
from cfgedu.images.sampling import sample_batches
from cfgedu.nets.mlp import EpsMLP, MLPConfig
from cfgedu.nets.unet import Attention, ResBlock, UNet, UNetConfig

TINY = UNetConfig(image_size=8, in_channels=1, num_classes=3, model_channels=8, channel_mult=(1, 2),
                  num_res_blocks=1, attention_resolutions=(4,), head_channels=8, norm_groups=4)
needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 instructions (AVX512-BF16 or AMX)")


def tiny_unet(seed: int = 0, config: UNetConfig = TINY) -> UNet:
    torch.manual_seed(seed)
    model = UNet(config)
    for param in model.parameters():  # no zero-initialised output layers: every layer shapes ε
        nn.init.normal_(param, std=0.2)
    return model.eval()


def inputs(batch: int = 6, config: UNetConfig = TINY):
    generator = torch.Generator().manual_seed(1)
    z = torch.randn((batch, *config.data_shape), generator=generator)
    lam = torch.rand(batch, generator=generator) * 40 - 20
    return z, lam, torch.randint(0, config.num_classes + 1, (batch,), generator=generator)


def layer_output_dtypes(model: nn.Module, run) -> set[torch.dtype]:
    """The dtypes the linear and convolution layers of `model` return while run() runs."""
    seen, hooks = set(), []
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            hooks.append(module.register_forward_hook(lambda module, args, out: seen.add(out.dtype)))
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@needs_bf16
def test_bf16_autocast_runs_the_network_in_bf16_on_this_cpu():
    model, (z, lam, c) = tiny_unet(), inputs()
    assert bf16_supported("cpu") and autocast("cpu", "bf16").fast_dtype == torch.bfloat16
    with torch.inference_mode():
        outputs = {}
        seen = {p: layer_output_dtypes(model, lambda p=p: outputs.setdefault(p, at_precision(model, p)(z, lam, c)))
                for p in ("fp32", "bf16")}
    assert seen == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}  # every matmul and convolution
    assert outputs["bf16"].dtype == torch.float32  # cast back for whoever reads ε
    error = (outputs["bf16"] - outputs["fp32"]).norm() / outputs["fp32"].norm()
    assert 1e-4 < error < 0.05  # bf16 arithmetic: close to fp32, and not fp32


def test_without_bf16_instructions_autocast_is_off(monkeypatch):
    monkeypatch.setattr("cfgedu.core.tensors.cpu_has_bf16", lambda: False)
    assert not bf16_supported("cpu") and not autocast("cpu", "bf16")._enabled
    model, (z, lam, c) = tiny_unet(), inputs()
    with torch.inference_mode():
        assert layer_output_dtypes(model, lambda: at_precision(model, "bf16")(z, lam, c)) == {torch.float32}


@needs_bf16
def test_the_sampler_state_stays_float32_under_bf16():
    model = tiny_unet()
    c = torch.tensor([0, 1, 2, 0])
    eps_model = guided(at_precision(model, "bf16"), 1.0, null_label=model.num_classes)
    path = []
    with torch.inference_mode():
        seen = layer_output_dtypes(model, lambda: path.extend(sample(
            eps_model, TINY.data_shape, c, generator=torch.Generator().manual_seed(0), steps=4, trajectory=True)[1]))
    assert seen == {torch.bfloat16} and {z.dtype for z in path} == {torch.float32}
    draw = partial(sample_batches, model, c, 1.0, steps=4, batch_size=3)
    bf16 = torch.cat(list(draw(generator=torch.Generator().manual_seed(0), precision="bf16")))
    fp32 = torch.cat(list(draw(generator=torch.Generator().manual_seed(0), precision="fp32")))
    assert bf16.dtype == torch.float32 and not bf16.is_inference()
    assert 0 < (bf16 - fp32).abs().max() < 0.1


def compile_or_skip(module: nn.Module) -> None:
    """Compile `module` in place with inductor, or skip the test saying why the compiler is unavailable."""
    try:
        module.compile()
    except Exception as error:  # any failure to set the compiler up means "unavailable here"
        pytest.skip(f"torch.compile is unavailable here: {type(error).__name__}: {error}")


def test_regionally_compiled_unet_matches_eager():
    """Compiling the repeated blocks (ResBlock, Attention) in place changes no output and no state-dict key."""
    config = dataclasses.replace(TINY, image_size=4, channel_mult=(1,), attention_resolutions=())
    eager, (z, lam, c) = tiny_unet(config=config), inputs(config=config)
    compiled = tiny_unet(config=config)
    with torch.no_grad():
        expected = eager(z, lam, c)
        for block in compiled.modules():
            if isinstance(block, ResBlock | Attention):
                compile_or_skip(block)
        try:
            got = compiled(z, lam, c)
        except Exception as error:  # inductor needs a working C++ toolchain
            pytest.skip(f"torch.compile cannot build kernels here: {type(error).__name__}: {error}")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert list(compiled.state_dict()) == list(eager.state_dict())


def test_a_compiled_runs_checkpoint_loads_into_an_eager_network(tmp_path, monkeypatch):
    """The checkpoint holds the network's own keys (no `_orig_mod.`), whatever compile wraps it in."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", partial(real_compile, backend="eager"))  # the wrapper, without kernels
    torch.manual_seed(0)
    model = EpsMLP(MLPConfig(num_classes=3, width=16, depth=2, class_dim=4))
    setup = TrainConfig(steps=2, batch_size=8, ema_decay=0.5, log_every=1, compile=True, device="cpu")
    result = train(model, MixtureSamples(per_class=8).build(seed=0), setup, tmp_path, kind="mlp", progress=False)
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert not [key for key in saved["model"]["state_dict"] if "_orig_mod" in key]
    eager = load_checkpoint_model(tmp_path, use_ema=False)
    assert type(eager) is EpsMLP
    torch.testing.assert_close(eager.state_dict(), result.model.state_dict())


def test_sampling_defaults_to_the_precision_the_run_trained_at(tmp_path):
    assert run_precision(tmp_path) == "fp32"  # no config.json: a run from before precisions were recorded
    (tmp_path / "config.json").write_text(json.dumps({"train": {"precision": "bf16"}}))
    assert run_precision(tmp_path) == run_precision(tmp_path / CHECKPOINT) == "bf16"
