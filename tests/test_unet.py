"""The ADM U-Net: ADM-64's size and cost, the conditioning paths, CFG's doubled batch, saving and bad inputs."""
import dataclasses

import pytest
import torch
from saved import write_model_file

from cfgedu.core.guidance import guided
from cfgedu.core.schedule import LogSNRSchedule
from cfgedu.engine.flops import count_parameters, describe_experiment, forward_flops
from cfgedu.engine.runs import load_checkpoint_model
from cfgedu.nets.embeddings import inv_cos, sinusoidal
from cfgedu.nets.registry import build_model
from cfgedu.nets.unet import UNet, UNetConfig

ADM64_WITH_SIGMA = 295_904_454  # guided-diffusion ADM-64 (learned σ: 6 output channels), SPEC 7.2
SIGMA_HEAD = 3 * 192 * 9 + 3  # the 3 extra output channels of its final 3x3 conv
NULL_ROW = 4 * 192  # our extra class-embedding row for ∅

TINY = UNetConfig(image_size=8, in_channels=2, num_classes=3, model_channels=16, channel_mult=(1, 2),
                  num_res_blocks=1, attention_resolutions=(4,), head_channels=8, norm_groups=4, dropout=0.0)


def perturbed(config: UNetConfig = TINY, seed: int = 0) -> UNet:
    """A U-Net whose zero-initialised layers are randomised too, so every path affects the output."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet(config)
        for p in model.parameters():
            p.data.normal_(0, 0.2)
    return model.eval()


def inputs(config: UNetConfig, batch: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((batch, *config.data_shape), generator=g)
    lam = torch.rand(batch, generator=g) * 40 - 20
    c = torch.randint(0, config.num_classes + 1, (batch,), generator=g)
    return z, lam, c


def test_imagenet64_matches_adm64_without_the_sigma_head():
    from cfgedu.engine.presets import preset

    with torch.device("meta"):
        model = UNet(preset("imagenet64").model)
    assert count_parameters(model) == ADM64_WITH_SIGMA - SIGMA_HEAD + NULL_ROW
    assert abs(count_parameters(model) / (ADM64_WITH_SIGMA - SIGMA_HEAD) - 1) < 0.01
    z = torch.zeros(2, 3, 64, 64, device="meta")
    out = model(z, torch.zeros(2, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))
    assert out.shape == z.shape and out.device.type == "meta"
    assert forward_flops(model) / 1e9 == pytest.approx(219.36, rel=2e-3)  # SPEC 7.2's count for ADM-64


def test_describe_reports_the_digits_preset():
    from cfgedu.engine.presets import preset

    info = describe_experiment(preset("digits"))
    model = build_model("unet", info["model"])
    assert info["parameters"] == count_parameters(model)
    assert info["forward_gflops"] * 1e9 == pytest.approx(forward_flops(model))
    assert info["train_gflops_per_image"] == pytest.approx(3 * info["forward_gflops"])


def test_fresh_network_predicts_zero_noise():
    """ADM zero-initialises the last conv of every residual branch and of the head."""
    model = UNet(TINY)
    assert torch.equal(model(*inputs(TINY, 3)), torch.zeros(3, *TINY.data_shape))


def test_a_first_level_wider_than_model_channels_sets_the_stem_and_head_width():
    """ADM's outermost width is model_channels · channel_mult[0], which need not be 1."""
    config = dataclasses.replace(TINY, channel_mult=(2, 3))
    model = perturbed(config)
    assert model.stem.out_channels == model.head[-1].in_channels == 32
    assert model(*inputs(config, 2)).shape == (2, *config.data_shape)


def test_each_output_depends_only_on_its_own_input():
    model = perturbed()
    z, lam, c = inputs(TINY, 5)
    together = model(z, lam, c)
    alone = torch.cat([model(z[i:i + 1], lam[i:i + 1], c[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_null_label_uses_its_own_embedding_row():
    model = perturbed()
    z, lam, _ = inputs(TINY, 4)
    null = torch.full((4,), TINY.num_classes)
    labelled = torch.zeros(4, dtype=torch.long)
    before_null, before_label = model(z, lam, null), model(z, lam, labelled)
    with torch.no_grad():
        model.class_embed.weight[TINY.num_classes] += 1.0
    assert not torch.allclose(model(z, lam, null), before_null)
    assert torch.equal(model(z, lam, labelled), before_label)


def test_doubled_batch_cfg_equals_two_separate_passes():
    model = perturbed()
    z, lam, _ = inputs(TINY, 6)
    c = torch.arange(6) % TINY.num_classes
    w = 1.7
    expected = (1 + w) * model(z, lam, c) - w * model(z, lam, torch.full_like(c, TINY.num_classes))
    torch.testing.assert_close(guided(model, w)(z, lam, c), expected, rtol=1e-4, atol=1e-5)


def test_lambda_embedding_is_the_cosine_schedule_time():
    lam = torch.linspace(-20, 20, 41)
    torch.testing.assert_close(inv_cos(lam), LogSNRSchedule().u(lam), atol=1e-4, rtol=0)
    assert inv_cos(torch.tensor([0.0])).item() == pytest.approx(0.5)
    features = sinusoidal(torch.tensor([0.0, 3.0]), 8)
    assert torch.equal(features[0], torch.tensor([1.0] * 4 + [0.0] * 4))  # cos 0 = 1, sin 0 = 0
    torch.testing.assert_close(features.pow(2).reshape(2, 2, 4).sum(1), torch.ones(2, 4))  # cos² + sin² = 1


def test_plain_resampling_variant_and_save_load_round_trip(tmp_path):
    config = dataclasses.replace(TINY, resblock_updown=False)
    model = perturbed(config)
    write_model_file(tmp_path / "unet.pt", model, "unet")
    loaded = load_checkpoint_model(tmp_path / "unet.pt", kinds=("unet",))
    z, lam, c = inputs(config, 3)
    assert loaded.config == config
    torch.testing.assert_close(loaded(z, lam, c), model(z, lam, c))


def test_corrupted_and_foreign_files_give_clear_errors(tmp_path):
    write_model_file(tmp_path / "unet.pt", perturbed(), "unet")
    data = (tmp_path / "unet.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable cfgedu checkpoint"):
        load_checkpoint_model(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a cfgedu run or model file"):
        load_checkpoint_model(tmp_path / "foreign.pt")


def test_bad_inputs_raise_value_errors():
    model = UNet(TINY)
    z, lam, c = inputs(TINY, 2)
    with pytest.raises(ValueError, match=r"takes images of shape \(B, 2, 8, 8\)"):
        model(torch.zeros(2, 2, 16, 16), lam, c)
    with pytest.raises(ValueError, match="labels must be in 0..2 or 3"):
        model(z, lam, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="lam must have shape"):
        model(z, lam[:1], c)
    with pytest.raises(ValueError, match="divisible by 2"):
        UNetConfig(image_size=10, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="norm_groups"):
        UNetConfig(model_channels=20, norm_groups=8)
