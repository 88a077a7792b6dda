"""Saved networks and training checkpoints that pass the weights-only load are still checked before a network is
built: config keys and types, then every weight's shape against a network on the meta device. Each failure is one
ValueError line naming the file and the key, and nothing real is allocated for a config that does not fit."""
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
from saved import write_model_file
from torch.nn.modules.module import register_module_parameter_registration_hook

from cfgedu.core.configs import config_from_dict
from cfgedu.data.toy import MixtureSamples
from cfgedu.engine.config import TrainConfig
from cfgedu.engine.loop import train
from cfgedu.engine.runs import CHECKPOINT, METRICS, load_checkpoint_model
from cfgedu.nets.mlp import EpsMLP, MLPConfig
from cfgedu.nets.unet import UNetConfig

SMALL = MLPConfig(num_classes=3, width=16, depth=2, class_dim=4)  # trunk.0.weight: (16, 2 + 1 + 2·4 + 4)


def tiny() -> EpsMLP:
    torch.manual_seed(0)
    return EpsMLP(SMALL)


def edit(path, change) -> None:
    """Apply change(record) to a saved file, as a hand-editor (or an attacker) would; it stays weights-only."""
    record = torch.load(path, weights_only=True)
    change(record)
    torch.save(record, path)


def refusal(call, path) -> str:
    """The message of the ValueError that call() raises: one line that names the file."""
    with pytest.raises(ValueError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


@contextmanager
def parameter_devices():
    """The device type of every parameter any module registers meanwhile."""
    devices = []
    handle = register_module_parameter_registration_hook(lambda module, name, param: devices.append(param.device.type))
    try:
        yield devices
    finally:
        handle.remove()


def set_config(**values):
    return lambda record: record["config"].update(values)


def set_weight(name, value):
    return lambda record: record["state_dict"].update({name: value})


@pytest.mark.parametrize("change, message", [
    (set_config(colour="red"), "unknown config key 'colour' for a MLPConfig"),
    (set_config(width="16"), "config key 'width' must be int, got '16'"),
    (set_config(width=16.0), "config key 'width' must be int, got 16.0"),
    (set_config(data_std=True), "config key 'data_std' must be float, got True"),
    (set_config(width=0), "bad saved config: width must be an integer >= 1, got 0"),
    (lambda record: record.update(config=[16, 2]), "the saved config is a list"),
    (lambda record: record.update(kind="transformer"), "unknown model kind 'transformer'"),
    (lambda record: record.pop("config"), "has no 'config' entry"),
    (lambda record: record["state_dict"].pop("trunk.2.bias"), "'state_dict' lacks the entry 'trunk.2.bias'"),
    (set_weight("extra", torch.zeros(1)), "'state_dict' has an unknown entry 'extra'"),
    (set_weight("trunk.0.weight", torch.zeros(16, 3)),
     ("entry 'trunk.0.weight' is torch.float32 (16, 3), but the saved config describes a torch.float32 tensor of "
      "shape (16, 15)")),
    (set_weight("trunk.0.weight", torch.zeros(16, 15, dtype=torch.complex64)), "is torch.complex64 (16, 15)"),
    (set_weight("trunk.0.weight", [1.0]), "entry 'trunk.0.weight' is list"),
    (lambda record: record.update(state_dict=torch.zeros(3)), "'state_dict' is a Tensor, not a state dict"),
])
def test_hand_edited_model_files_are_refused_naming_the_key(tmp_path, change, message):
    path = write_model_file(tmp_path / "model.pt", tiny(), "mlp")
    edit(path, change)
    assert message in refusal(lambda: load_checkpoint_model(path), path)


def test_a_huge_config_is_refused_on_the_meta_device(tmp_path):
    """width 3,000,000 would be 36 TB of weights; depth 10^9 a billion modules: both refused, nothing real built."""
    path = write_model_file(tmp_path / "model.pt", tiny(), "mlp")
    edit(path, set_config(width=3_000_000))
    with parameter_devices() as devices:
        message = refusal(lambda: load_checkpoint_model(path), path)
    assert "'trunk.0.weight' is torch.float32 (16, 15), but the saved config describes a torch.float32 tensor of " \
           "shape (3000000, 15)" in message
    assert devices and set(devices) == {"meta"}
    edit(path, set_config(width=16, depth=10**9))
    began = time.perf_counter()
    with parameter_devices() as devices:
        message = refusal(lambda: load_checkpoint_model(path), path)
    assert "far more parameters than the 7 tensors saved with it" in message and set(devices) == {"meta"}
    assert time.perf_counter() - began < 5


def test_a_good_file_still_loads_exactly(tmp_path):
    model = tiny()
    loaded = load_checkpoint_model(write_model_file(tmp_path / "model.pt", model, "mlp"))
    assert loaded.config == SMALL and not loaded.training
    assert all(torch.equal(a, b)
               for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True))


@dataclass(frozen=True)
class Needs:
    size: int
    scale: float = 1.0


def test_saved_configs_are_typed_like_their_dataclass(tmp_path):
    path = tmp_path / "x.pt"
    assert ("the saved config has no 'size' key, which a Needs needs"
            in refusal(lambda: config_from_dict(Needs, {}, path), path))
    assert config_from_dict(Needs, {"size": 2, "scale": 3}, path) == Needs(2, 3.0)  # an int will do for a float
    assert config_from_dict(UNetConfig, {"channel_mult": [1, 2]}, path).channel_mult == (1, 2)  # JSON gives lists
    assert "config key 'channel_mult' must be tuple[int, ...], got [1, '2']" in refusal(
        lambda: config_from_dict(UNetConfig, {"channel_mult": [1, "2"]}, path), path)


# ---------------------------------------------------------------------------------------------- training checkpoints


@pytest.fixture(scope="module")
def data():
    return MixtureSamples(per_class=8).build(seed=0)


def run(data, out_dir, steps: int = 2, resume: bool = False):
    config = TrainConfig(steps=steps, batch_size=8, lr=1e-2, log_every=1)
    return train(tiny(), data, config, out_dir, kind="mlp", resume=resume, progress=False)


@pytest.fixture
def run_dir(tmp_path, data):
    run(data, tmp_path)
    return tmp_path


def first_moment(record, shape):
    record["optimizer"]["state"][1]["exp_avg"] = torch.zeros(shape)


@pytest.mark.parametrize("change, loading, resuming", [
    (lambda r: r.pop("ema"), "has no 'ema' entry", "has no 'ema' entry"),
    (lambda r: r["model"].pop("kind"), "has no 'model.kind' entry", "has no 'model.kind' entry"),
    (lambda r: r["model"]["config"].update(colour="red"), "unknown config key 'colour'", "unknown config key 'colour'"),
    (lambda r: r["model"]["config"].update(width=3_000_000), "'ema' entry 'trunk.0.weight' is torch.float32 (16, 15)",
     "holds a 'mlp' network with config"),
    (lambda r: r["ema"].update({"trunk.0.weight": torch.zeros(16, 3)}), "'ema' entry 'trunk.0.weight'",
     "'ema' entry 'trunk.0.weight'"),
    (lambda r: r.update(step="60"), "'step' entry must be an integer >= 0, got '60'", "'step' entry must be"),
    (lambda r: first_moment(r, 3), None,
     "'optimizer' entry holds moments of another shape than the parameter (16, 15)"),
    (lambda r: r["optimizer"].update(param_groups=[]), None, "the 'optimizer' entry does not fit this network's AdamW"),
])
def test_hand_edited_training_checkpoints_are_refused_naming_the_key(run_dir, data, change, loading, resuming):
    path, metrics = run_dir / CHECKPOINT, (run_dir / METRICS).read_text()
    edit(path, change)
    if loading is not None:
        with parameter_devices() as devices:
            assert loading in refusal(lambda: load_checkpoint_model(run_dir), path)
        assert set(devices) <= {"meta"}  # refused before any real network was built
    assert resuming in refusal(lambda: run(data, run_dir, steps=4, resume=True), path)
    assert (run_dir / METRICS).read_text() == metrics
