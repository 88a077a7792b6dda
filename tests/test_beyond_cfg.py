"""Samplers beyond DDIM and the guidance methods beyond CFG, pinned on the exact mixture."""
import math

import pytest
import torch

from cfgedu.core.guidance import guided, unconditional
from cfgedu.core.guidance_methods import AdaptiveProjected, Autoguided, CFGPlusPlus, Guidance, parallel_part
from cfgedu.core.samplers import ddim_step, denoise, evaluations, sample, steps_for
from cfgedu.core.schedule import LogSNRSchedule, q_sample
from cfgedu.core.tensors import make_generator
from cfgedu.toy.beyond_cfg import guidance_term_curl, matched_strength
from cfgedu.toy.grid import Grid2D, HistogramTV, tilted_densities
from cfgedu.toy.mixture import GaussianMixture

# EDM's σ range, σ/α from 80 down to 0.002, as log-SNR
EDM_RANGE = LogSNRSchedule(-2 * math.log(80.0), -2 * math.log(0.002))


def noised(mixture, lam: float, n: int = 256, seed: int = 0):
    """(z, λ, c): n draws of p(x, c) noised to level λ, float64."""
    generator = make_generator(seed)
    x, c = mixture.sample_labelled(n, generator)
    lam_batch = torch.full((n,), lam, dtype=torch.float64)
    return q_sample(x, lam_batch, torch.randn(n, 2, generator=generator, dtype=torch.float64)), lam_batch, c


def tv_to_data(mixture, samples, grid, histogram):
    """Mean over classes of the histogram TV of samples (K, N, 2) to p(x|c)."""
    target = tilted_densities(mixture, grid, 0.0)
    return sum(histogram(samples[c], target[c]) for c in range(mixture.num_classes)) / mixture.num_classes


@pytest.mark.parametrize("method, nfe", [("dpm++2m", 32), ("heun", 256), ("ddim", 64)])
def test_deterministic_samplers_reach_the_data_within_the_noise_floor(toy, method, nfe):
    """With exact ε* at w = 0 every probability-flow solver converges to the data distribution as NFE grows: at
    these budgets its TV is within 15% of the TV of exact draws (the noise floor), and above the floor at NFE 8."""
    n = 5000
    labels = torch.arange(3).repeat_interleave(n)
    grid = Grid2D.covering(toy, n=384)
    histogram = HistogramTV(grid, 32)
    floor = sum(histogram.noise_floor(d, n, make_generator(7)) for d in tilted_densities(toy, grid, 0.0)) / 3
    x = sample(toy, (2,), labels, generator=make_generator(1), steps=steps_for(method, nfe), method=method,
               dtype=torch.float64).reshape(3, n, 2)
    assert tv_to_data(toy, x, grid, histogram) < 1.15 * floor
    coarse = sample(toy, (2,), labels, generator=make_generator(1), steps=steps_for(method, 8), method=method,
                    dtype=torch.float64).reshape(3, n, 2)
    assert tv_to_data(toy, coarse, grid, histogram) > floor


def test_higher_order_solvers_track_the_ode_better_than_ddim(toy):
    """From the same z_1, each solver's endpoint against a 2048-step DPM-Solver++(2M) reference: DDIM's error halves
    as T doubles (first order); DPM-Solver++(2M), and Heun on EDM's σ range, are far closer at the same T."""
    labels = torch.arange(3).repeat_interleave(100)

    def endpoint(method, steps, schedule):
        return sample(toy, (2,), labels, generator=make_generator(1), steps=steps, method=method,
                      dtype=torch.float64, schedule=schedule)

    for schedule in (LogSNRSchedule(), EDM_RANGE):
        reference = endpoint("dpm++2m", 2048, schedule)
        error = {(m, T): (endpoint(m, T, schedule) - reference).norm(dim=1).mean().item()
                 for m in ("ddim", "heun", "dpm++2m") for T in (64, 128)}
        assert error[("ddim", 64)] / error[("ddim", 128)] == pytest.approx(2.0, abs=0.1)
        assert error[("dpm++2m", 128)] < error[("ddim", 128)] / 5
    assert error[("heun", 64)] < error[("ddim", 64)] / 100  # EDM's range: the last schedule of the loop


def test_evaluations_are_what_the_sampler_calls(toy):
    """evaluations(method, T) counts the eps_model's calls: T, and 2T − 2 for Heun; steps_for inverts it."""
    for method in ("ancestral", "ddim", "heun", "dpm++2m"):
        for steps in (1, 2, 5):
            calls = []
            model = lambda z, lam, c, calls=calls: calls.append(1) or toy(z, lam, c)  # noqa: E731
            sample(model, (2,), torch.zeros(3, dtype=torch.long), generator=make_generator(0), steps=steps,
                   method=method, num_classes=3)
            assert len(calls) == evaluations(method, steps)
        assert evaluations(method, steps_for(method, 16)) == 16
    assert steps_for("heun", 16) == 9
    with pytest.raises(ValueError, match="even number of evaluations"):
        steps_for("heun", 15)


def test_cfg_is_autoguidance_by_the_unconditional_model_and_apg_without_its_changes(toy):
    z, lam, c = noised(toy, 0.5)
    cfg = guided(toy, 2.5)(z, lam, c)
    auto = Autoguided(toy, unconditional(toy, 3), 2.5, 3)(z, lam, c)
    apg = AdaptiveProjected(toy, 2.5, 3, eta=1.0, momentum=0.0, norm_threshold=None)(z, lam, c)
    assert torch.allclose(auto, cfg, atol=1e-12) and torch.allclose(apg, cfg, atol=1e-9)
    projected = AdaptiveProjected(toy, 2.5, 3, eta=0.0, momentum=0.0, norm_threshold=None)(z, lam, c)
    assert not torch.allclose(projected, cfg, atol=1e-3)


def test_apg_drops_the_parallel_part_caps_the_norm_and_damps_with_momentum(toy):
    z, lam, c = noised(toy, 1.0)
    x_cond, x_uncond = toy.x_hat(z, lam, c), toy.x_hat(z, lam, torch.full_like(c, 3))
    delta = x_cond - x_uncond
    orthogonal = delta - parallel_part(delta, x_cond)
    assert (orthogonal * x_cond).sum(1).abs().max() < 1e-10  # Δ_⊥ ⟂ x̂(z, c)
    apg = AdaptiveProjected(toy, 2.0, 3, eta=0.0, momentum=0.0, norm_threshold=None)
    assert torch.allclose(denoise(apg, z, lam, c), x_cond + 2.0 * orthogonal, atol=1e-9)
    capped = AdaptiveProjected(toy, 2.0, 3, eta=1.0, momentum=0.0, norm_threshold=0.05)
    step = denoise(capped, z, lam, c) - x_cond  # w·Δ·min(1, r/‖Δ‖)
    assert step.norm(dim=1).max() <= 2.0 * 0.05 + 1e-9
    damped = AdaptiveProjected(toy, 2.0, 3, eta=1.0, momentum=-0.5, norm_threshold=None)
    first = denoise(damped, z, lam, c) - x_cond
    second = denoise(damped, z, lam, c) - x_cond  # the same Δ again: Δ − 0.5·Δ
    assert torch.allclose(second, 0.5 * first, atol=1e-9)
    with pytest.raises(ValueError, match="one AdaptiveProjected per sampling run"):
        damped(z[:3], lam[:3], c[:3])


def test_cfg_plus_plus_is_cfg_with_a_step_size_dependent_w(toy):
    """One CFG++ DDIM step at strength l equals a CFG DDIM step at w = l/(1 − e^{−Δλ/2}) − 1: both are linear in
    ε(z, c) and ε(z, ∅) with the same total weight, so small steps make CFG++'s effective guidance strong."""
    z, lam, c = noised(toy, -1.0)
    for strength, lam_next in ((0.2, -0.7), (0.6, 1.5)):
        model = CFGPlusPlus(toy, strength, 3)
        next_lam = torch.full_like(lam, lam_next)
        plus = ddim_step(z, denoise(model, z, lam, c), lam, next_lam, eps=model.renoise(z, lam, c))
        w = strength / (1 - math.exp(-(lam_next + 1.0) / 2)) - 1
        cfg = ddim_step(z, denoise(guided(toy, w), z, lam, c), lam, next_lam)
        assert torch.allclose(plus, cfg, atol=1e-10)


def test_guidance_wraps_each_method_for_any_sampler(toy):
    labels = torch.arange(3).repeat_interleave(4)
    for guidance in (Guidance(), Guidance("apg"), Guidance("autoguidance", guide=unconditional(toy, 3))):
        model, options = guidance.wrap(toy, 1.0)
        assert options == {} and guidance.sampler is None
        x = sample(model, (2,), labels, generator=make_generator(0), steps=6, method="heun")
        assert x.shape == (12, 2) and torch.isfinite(x).all()
    model, options = Guidance("cfg++").wrap(toy, 0.3)
    assert Guidance("cfg++").sampler == "ddim" and set(options) == {"renoise"}
    with pytest.raises(ValueError, match="renoise= defines a DDIM step"):
        sample(model, (2,), labels, generator=make_generator(0), steps=4, method="ancestral", **options)
    with pytest.raises(ValueError, match="autoguidance needs guide="):
        Guidance("autoguidance")
    with pytest.raises(ValueError, match="method must be one of"):
        Guidance("pag")
    with pytest.raises(ValueError, match="norm_threshold must be > 0"):
        AdaptiveProjected(toy, 1.0, 3, norm_threshold=0.0)


def test_matched_strength_interpolates_and_says_when_the_target_is_out_of_reach():
    assert matched_strength([0, 1, 3], [2.0, 2.5, 2.9], 2.7) == (pytest.approx(2.0), True)
    assert matched_strength([3, 0, 1], [2.9, 2.0, 2.5], 2.5) == (pytest.approx(1.0), True)  # any order
    assert matched_strength([0, 4, 16], [2.1, 2.3, 2.2], 2.9) == (4, False)
    with pytest.raises(ValueError, match="one score per strength"):
        matched_strength([0, 1], [2.0], 2.5)


def test_the_curl_of_a_guidance_term(toy):
    """Exact scores and their CFG term are gradients (curl ~0); a guide with a rotation in it is caught."""
    assert guidance_term_curl(toy, unconditional(toy, 3)) < 1e-6
    assert guidance_term_curl(toy, GaussianMixture.three_gaussians(std=0.8)) < 1e-6

    def swirled(z, lam, c):
        return toy(z, lam, c) + 0.3 * torch.stack([-z[:, 1], z[:, 0]], dim=1)

    assert guidance_term_curl(toy, swirled) > 0.1


def test_paths_start_together_and_end_at_the_samples(toy):
    """Every w starts from the same z_1; the last frame is the sampler's output; the backgrounds are densities."""
    from cfgedu.toy.trajectories import guided_paths, level_densities

    paths = guided_paths(toy, 3, (0.0, 4.0), 20, steps=6)
    assert paths.points.shape == (2, 7, 3, 20, 2) and len(paths.levels) == 7
    assert torch.equal(paths.points[0, 0], paths.points[1, 0]) and not torch.allclose(paths.points[0, -1],
                                                                                      paths.points[1, -1])
    labels = torch.arange(3).repeat_interleave(20)
    alone = sample(guided(toy, 4.0), (2,), labels, generator=make_generator(0), steps=6, method="ddim",
                   dtype=torch.float64)
    assert torch.allclose(paths.points[1, -1].reshape(-1, 2), alone)
    assert paths.levels[0] == -20 and paths.levels[-1] == paths.levels[-2] == 20
    grid = Grid2D.covering(toy, n=48)
    densities = level_densities(toy, grid, 4.0, paths.levels[[0, -1]])
    assert torch.allclose(densities.sum((1, 2)) * grid.cell**2, torch.ones(2, dtype=torch.float64))
