"""The training engine: Algorithm 1's loss, accumulation, warm-up, clipping, EMA, checkpoints, resume, NaN stop."""
import dataclasses
import fcntl
import json
import math
import os
from dataclasses import dataclass
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from threads import one_thread  # noqa: F401 (autouse)
from torch import nn

from cfgedu.core.io import safe_torch_load
from cfgedu.core.losses import algorithm1_loss, diffusion_loss, draw_noise
from cfgedu.data.source import TensorData, slot_offset
from cfgedu.data.toy import MixtureSamples
from cfgedu.engine.config import TrainConfig
from cfgedu.engine.loop import learning_rate, train
from cfgedu.engine.processes import join_process_group
from cfgedu.engine.runs import CHECKPOINT, LOCK, METRICS, load_checkpoint_model
from cfgedu.nets.mlp import EpsMLP, MLPConfig

KIND = "mlp"


@pytest.fixture(scope="module")
def data():
    return MixtureSamples(per_class=32).build(seed=0)


def tiny_mlp(seed: int = 0) -> EpsMLP:
    torch.manual_seed(seed)  # network initialisation only; training draws come from its own generators
    return EpsMLP(MLPConfig(num_classes=3, width=16, depth=2, class_dim=4))


def config(**changes) -> TrainConfig:
    return dataclasses.replace(TrainConfig(steps=4, batch_size=16, lr=1e-2, ema_decay=0.9, log_every=1), **changes)


def run(cfg: TrainConfig, data, out_dir=None, model=None, **kwargs):
    return train(model or tiny_mlp(), data, cfg, out_dir, kind=KIND, progress=False, **kwargs)


def weights(module: nn.Module | dict) -> torch.Tensor:
    state = module.state_dict() if isinstance(module, nn.Module) else module
    return torch.cat([t.detach().flatten() for t in state.values()])


def test_whole_batch_noise_is_diffusion_loss_draws(data):
    """With the whole batch, Algorithm 1 here is cfgedu.core.losses.diffusion_loss to the bit (same draws)."""
    model, cfg = tiny_mlp(), config(p_uncond=0.3)
    x, c = data.batch(0, 0, 0, 1, 16)
    noise = draw_noise(16, data.data_shape, cfg.p_uncond, torch.Generator().manual_seed(5), cfg.schedule())
    ours = algorithm1_loss(model, x, c, noise, null_label=3)
    reference = diffusion_loss(model, x, c, p_uncond=0.3, num_classes=3, generator=torch.Generator().manual_seed(5))
    assert ours.item() == reference.item()


def test_slots_partition_the_global_batch(data):
    """Every split of a step over processes and micro-steps hands out the same global batch."""
    whole_x, whole_c = data.batch(3, 0, 0, 1, 16)
    parts = [data.batch(3, micro, rank, 2, 4) for micro in range(2) for rank in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole_x)
    assert torch.equal(torch.cat([p[1] for p in parts]), whole_c)
    assert [slot_offset(m, r, 2, 4) for m in range(2) for r in range(2)] == [0, 4, 8, 12]
    assert not torch.equal(data.batch(4, 0, 0, 1, 16)[0], whole_x)  # a new step draws a new batch


def test_gradient_accumulation_takes_the_full_batch_step(data):
    full = run(config(), data)
    accumulated = run(config(grad_accum=4), data)
    per_device = run(config(per_device_batch=8), data)  # grad_accum derived: 16 / (1 · 8) = 2
    assert torch.allclose(weights(accumulated.model), weights(full.model), atol=1e-6, rtol=0)
    assert torch.allclose(weights(per_device.model), weights(full.model), atol=1e-6, rtol=0)
    assert [r["loss"] for r in accumulated.history] == pytest.approx([r["loss"] for r in full.history], abs=1e-6)


def test_micro_batch_sizes_and_their_errors():
    assert TrainConfig(steps=1, batch_size=2048, per_device_batch=64).micro_batch(world_size=4) == (64, 8)
    assert TrainConfig(steps=1, batch_size=2048, grad_accum=2).micro_batch(world_size=8) == (128, 2)
    with pytest.raises(ValueError, match="not a multiple"):
        TrainConfig(steps=1, batch_size=100, per_device_batch=64).micro_batch(1)
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(steps=1, batch_size=128, per_device_batch=64, grad_accum=2)


@pytest.mark.parametrize("changes, message", [
    ({"steps": 0}, "steps"), ({"lr": math.nan}, "lr"), ({"grad_clip": -1.0}, "grad_clip"),
    ({"ema_decay": 1.5}, "ema_decay"), ({"p_uncond": -0.1}, "p_uncond"), ({"precision": "fp16"}, "precision"),
    ({"lambda_min": 5.0, "lambda_max": 1.0}, "lambda_min"), ({"betas": (0.9, 1.0)}, "betas"),
    ({"device": "tpu"}, "device"), ({"checkpoint_every": -1}, "checkpoint_every"),
    ({"process_group_timeout_s": 0.0}, "process_group_timeout_s"),
    ({"process_group_timeout_s": math.inf}, "process_group_timeout_s")])
def test_bad_configs_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        config(**changes)


def test_linear_warmup_then_constant(data):
    cfg = config(warmup_steps=4, steps=6, lr=0.1)
    assert [learning_rate(cfg, s) for s in range(6)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    assert [r["lr"] for r in run(cfg, data).history] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_gradient_clipping_bounds_the_first_adam_step(data):
    """Adam's first step is lr·g/(|g| + 1e-8) elementwise: about lr unclipped, under lr·norm/1e-8 when the
    gradient is clipped to a tiny norm; the logged norm is the one before clipping."""
    before = weights(tiny_mlp())
    free = run(config(steps=1, grad_clip=None, lr=1e-3), data)
    clipped = run(config(steps=1, grad_clip=1e-12, lr=1e-3), data)
    assert (weights(free.model) - before).abs().max() == pytest.approx(1e-3, rel=1e-3)
    assert (weights(clipped.model) - before).abs().max() < 1e-3 * 1e-12 / 1e-8 * 1.01
    assert clipped.history[0]["grad_norm"] == pytest.approx(free.history[0]["grad_norm"])


def test_ema_is_the_exponential_average_of_the_weights(data):
    start = weights(tiny_mlp())
    result = run(config(steps=1, ema_decay=0.75), data)
    assert torch.allclose(weights(result.ema), 0.75 * start + 0.25 * weights(result.model), atol=1e-7)
    assert not any(p.requires_grad for p in result.ema.parameters())


def test_metrics_log_and_checkpoint(data, tmp_path):
    seen = []
    result = run(config(steps=6, log_every=2, checkpoint_every=4), data, tmp_path, on_log=seen.append)
    lines = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6] and lines == result.history == seen
    assert all(line["images_per_s"] > 0 and line["grad_norm"] > 0 for line in lines)
    checkpoint = safe_torch_load(tmp_path / CHECKPOINT)
    assert checkpoint["step"] == 6 and checkpoint["train_config"]["steps"] == 6
    assert torch.equal(weights(load_checkpoint_model(tmp_path)), weights(result.ema))
    assert torch.equal(weights(load_checkpoint_model(tmp_path / CHECKPOINT, use_ema=False)), weights(result.model))


def test_resume_continues_exactly(data, tmp_path):
    straight = run(config(steps=6), data, tmp_path / "straight")
    run(config(steps=3), data, tmp_path / "split")
    (tmp_path / "split" / f".{CHECKPOINT}.x1.tmp").write_bytes(b"a write cut short by a kill")
    with pytest.raises(ValueError, match="exists: resume it"):
        run(config(steps=6), data, tmp_path / "split")
    resumed = run(config(steps=6), data, tmp_path / "split", resume=True)
    assert resumed.step == 6 and [r["step"] for r in resumed.history] == [4, 5, 6]
    assert torch.equal(weights(resumed.model), weights(straight.model))
    assert torch.equal(weights(resumed.ema), weights(straight.ema))
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == sorted([LOCK, CHECKPOINT, METRICS])


def test_resume_refuses_steps_below_the_checkpoint_and_does_nothing_at_it(data, tmp_path):
    run(config(steps=4), data, tmp_path)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="holds step 4, beyond steps 2; nothing was trained"):
        run(config(steps=2), data, tmp_path, resume=True)
    same = run(config(steps=4, log_every=2), data, tmp_path, resume=True)
    assert (same.step, same.resumed_from, same.history) == (4, 4, [])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files  # nothing was written
    assert run(config(steps=5), data, tmp_path, resume=True).resumed_from == 4


class Killed(BaseException):
    """What a SIGKILL would do at that moment: stop everything."""


def test_a_kill_while_trimming_the_metrics_keeps_the_history(data, tmp_path, monkeypatch):
    run(config(steps=2), data, tmp_path)
    metrics = tmp_path / METRICS
    metrics.write_text(metrics.read_text() + '{"step": 3, "loss": 1.0}\n{"step": 4, "lo')  # logged past it
    history = metrics.read_text()

    def kill(fd):
        raise Killed

    monkeypatch.setattr(os, "fsync", kill)  # the first write to disk of the resumed run is killed
    with pytest.raises(Killed):
        run(config(steps=4), data, tmp_path, resume=True)
    assert metrics.read_text() == history
    monkeypatch.undo()
    run(config(steps=4), data, tmp_path, resume=True)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4]


def test_elapsed_seconds_carry_over_a_resume(data, tmp_path):
    """The checkpoint carries the training time so far; an old checkpoint without it starts again from 0."""
    for name, carried in (("new", 1000.0), ("old", 0.0)):
        run(config(steps=2), data, tmp_path / name)
        saved = safe_torch_load(tmp_path / name / CHECKPOINT)
        logged = json.loads((tmp_path / name / METRICS).read_text().splitlines()[-1])["seconds"]
        assert 0 < logged <= saved["seconds"]
        saved["seconds"] = carried
        torch.save({key: value for key, value in saved.items() if name == "new" or key != "seconds"},
                   tmp_path / name / CHECKPOINT)
        run(config(steps=4), data, tmp_path / name, resume=True)
        seconds = [json.loads(line)["seconds"] for line in (tmp_path / name / METRICS).read_text().splitlines()]
        assert carried < seconds[2] < seconds[3] < carried + 60
        assert carried < safe_torch_load(tmp_path / name / CHECKPOINT)["seconds"] < carried + 60


def test_a_locked_run_folder_is_refused(data, tmp_path):
    """A second train on the folder while one holds its lock (here: this test) writes nothing and says why."""
    with open(tmp_path / LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match=f"{tmp_path} is in use: another cfgedu train holds"):
            run(config(), data, tmp_path)
        assert [p.name for p in tmp_path.iterdir()] == [LOCK]
    assert run(config(), data, tmp_path).step == 4  # the lock is gone with its holder


class Stop(Exception):
    pass


def test_the_process_group_timeout_reaches_init_process_group(data, tmp_path, monkeypatch):
    asked = []

    def init_process_group(backend, **kwargs):
        asked.append((backend, kwargs["timeout"]))
        raise Stop

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun
    with pytest.raises(Stop):
        run(config(process_group_timeout_s=42.0), data)
    with pytest.raises(Stop):
        join_process_group(torch.device("cpu"))  # the default, also used by cfgedu.images.inception
    assert asked == [("gloo", timedelta(seconds=42)), ("gloo", timedelta(seconds=600))]
    monkeypatch.delenv("WORLD_SIZE")
    run(config(steps=2), data, tmp_path)
    assert run(config(process_group_timeout_s=5.0), data, tmp_path, resume=True).step == 4  # may change on resume


def test_resume_refuses_another_network_or_setup(data, tmp_path):
    run(config(steps=2), data, tmp_path)
    other = EpsMLP(MLPConfig(num_classes=3, width=8, depth=1, class_dim=4))
    with pytest.raises(ValueError, match="another output folder"):
        run(config(steps=4), data, tmp_path, model=other, resume=True)
    with pytest.raises(ValueError, match=r"lr 0.01 -> 0.5"):
        run(config(steps=4, lr=0.5), data, tmp_path, resume=True)


class PoisonedData:
    """The tiny data set, with NaN inputs from step `bad_step` on."""

    def __init__(self, data, bad_step):
        self.data, self.bad_step = data, bad_step
        self.num_classes, self.data_shape = data.num_classes, data.data_shape

    def batch(self, step, micro, rank, world_size, size):
        x, c = self.data.batch(step, micro, rank, world_size, size)
        return (x * math.nan if step >= self.bad_step else x), c


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    good = run(config(steps=5), data)
    with pytest.raises(FloatingPointError, match="at step 6"):
        run(config(steps=8, checkpoint_every=1), PoisonedData(data, bad_step=5), tmp_path)
    saved = safe_torch_load(tmp_path / CHECKPOINT)
    assert saved["step"] == 5 and torch.equal(weights(saved["model"]["state_dict"]), weights(good.model))
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written is left behind
    assert (tmp_path / METRICS).read_text().count("\n") == 5


def test_non_finite_step_is_caught_at_the_next_check_before_any_checkpoint(data, tmp_path):
    """Between log intervals nothing is read on the host: the NaN of step 6 stops the run at the check of step 8,
    before step 8's checkpoint; the error still names step 6."""
    good = run(config(steps=4), data)
    with pytest.raises(FloatingPointError, match="at step 6; stopped at step 8"):
        run(config(steps=12, log_every=4, checkpoint_every=4), PoisonedData(data, bad_step=5), tmp_path)
    saved = safe_torch_load(tmp_path / CHECKPOINT)
    assert saved["step"] == 4 and torch.equal(weights(saved["model"]["state_dict"]), weights(good.model))
    assert [json.loads(line)["step"] for line in (tmp_path / METRICS).read_text().splitlines()] == [4]


def test_the_loop_reads_the_device_only_at_log_steps(data, monkeypatch):
    """float(), int(), bool() and .tolist() of a tensor, called from the loop: only at the two log steps."""
    import sys

    import cfgedu.engine.loop as loop

    reads = []

    def counted(name):
        original = getattr(torch.Tensor, name)

        def read(tensor, *args):
            if sys._getframe(1).f_code.co_filename == loop.__file__:
                reads.append(name)
            return original(tensor, *args)

        return read

    for name in ("__float__", "__int__", "__bool__", "tolist", "item"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    history = run(config(steps=8, log_every=4), data).history
    assert len(history) == 2 and len(reads) == 2 * 4  # per log step: the flag, the window's loss, loss, grad norm


def test_bf16_trains_in_bf16_on_a_cpu_with_bf16_instructions(data):
    from cfgedu.core.tensors import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 instructions (AVX512-BF16 or AMX)")
    bf16, fp32 = run(config(precision="bf16"), data), run(config(), data)
    assert not torch.equal(weights(bf16.model), weights(fp32.model))  # not a silent fallback to fp32
    for ours, reference in zip(bf16.history, fp32.history, strict=True):
        assert ours["loss"] == pytest.approx(reference["loss"], rel=0.05)


def test_bf16_falls_back_to_fp32_on_a_cpu_without_bf16(data, monkeypatch):
    monkeypatch.setattr("cfgedu.core.tensors.cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="bf16 instructions"):
        bf16 = run(config(precision="bf16"), data)
    assert torch.equal(weights(bf16.model), weights(run(config(), data).model))


@dataclass(frozen=True)
class ConvConfig:
    num_classes: int = 2
    channels: int = 4
    dropout: float = 0.0


class TinyConvNet(nn.Module):
    """ε_θ(z, λ, c) from two 3x3 convolutions, with λ and c added as per-channel biases, and dropout between."""

    Config = ConvConfig

    def __init__(self, config: ConvConfig):
        super().__init__()
        self.config, self.num_classes = config, config.num_classes
        self.inp, self.out = nn.Conv2d(2, config.channels, 3, padding=1), nn.Conv2d(config.channels, 2, 3, padding=1)
        self.label, self.drop = nn.Embedding(config.num_classes + 1, config.channels), nn.Dropout(config.dropout)

    def forward(self, z, lam, c):
        self.input_channels_last = z.is_contiguous(memory_format=torch.channels_last)
        h = self.inp(z) + self.label(c)[:, :, None, None] + lam[:, None, None, None] / 20
        return self.out(self.drop(torch.nn.functional.silu(h)))


@pytest.fixture(scope="module")
def images():
    return TensorData(torch.randn(24, 2, 6, 6, generator=torch.Generator().manual_seed(0)), torch.arange(24) % 2,
                      num_classes=2)


def conv_run(cfg: TrainConfig, images, out_dir=None, net: ConvConfig = ConvConfig(), **kwargs):
    torch.manual_seed(0)
    model, state = TinyConvNet(net), torch.get_rng_state()
    result = train(model, images, cfg, out_dir, kind="conv", progress=False, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)  # train() leaves the global generator as it found it
    return result


def test_dropout_is_exact_on_resume(images, tmp_path):
    heavy = ConvConfig(dropout=0.5)
    straight = conv_run(config(steps=4), images, tmp_path / "straight", heavy)
    conv_run(config(steps=2), images, tmp_path / "split", heavy)
    resumed = conv_run(config(steps=4), images, tmp_path / "split", heavy, resume=True)
    assert torch.equal(weights(resumed.model), weights(straight.model))


def test_channels_last_takes_the_same_steps(images):
    plain, last = (conv_run(config(channels_last=flag), images) for flag in (False, True))
    assert last.model.inp.weight.is_contiguous(memory_format=torch.channels_last)
    assert last.model.input_channels_last and not plain.model.input_channels_last
    assert torch.allclose(weights(plain.model), weights(last.model), atol=1e-6)


def test_bad_arguments_are_refused(data):
    with pytest.raises(ValueError, match="classes"):
        run(config(), data, model=EpsMLP(MLPConfig(num_classes=5)))
    with pytest.raises(ValueError, match="TrainConfig"):
        train(tiny_mlp(), data, {"steps": 1}, kind=KIND)
    with pytest.raises(ValueError, match="kind"):
        train(tiny_mlp(), data, config(), kind="")


def test_compile_option_compiles_the_network_and_takes_the_same_steps(data, tmp_path, monkeypatch):
    compiled, compile_ = [], torch.compile

    def eager_compile(module):  # the real torch.compile with the eager backend: no C++ build in a unit test
        compiled.append(module)
        return compile_(module, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    result = run(config(compile=True), data, tmp_path)
    assert len(compiled) == 1 and compiled[0] is result.model
    assert torch.allclose(weights(result.model), weights(run(config(), data).model), atol=1e-6)
    assert safe_torch_load(tmp_path / CHECKPOINT)["model"]["state_dict"].keys() == tiny_mlp().state_dict().keys()


def test_progress_bar_counts_the_steps(data, capsys):
    train(tiny_mlp(), data, config(steps=3), kind=KIND)
    bar = capsys.readouterr().err
    assert "train" in bar and "3/3" in bar
