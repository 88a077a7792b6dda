"""The guidance trade-off on the toy: the paper's Tables 1-2 in miniature, and what CFG really samples.

Sweeps w (and p_uncond for learned MLPs, and the number of steps T) and measures each sample set with
cfgedu.toy.metrics: the Fréchet distance to the data (the FID axis), the Inception score with the exact Bayes
posterior and with a logistic regression (the IS axis), k-NN precision/recall, and the TV distance to the
tilted target π_w(x|c) ∝ p(x|c)p(c|x)^w with its sampling-noise floor (SPEC Sec. 6). Exact-ε* rows add
samplers the paper does not try: ancestral at v = 0 / 0.3 / 1, DDIM, the ideal tilted sampler, MALA
correctors, guidance on a λ interval and a w schedule. Beyond CFG (cfgedu.toy.beyond_cfg): every sampler's TV
against its number of network evaluations (NFE), and the guidance methods that followed CFG swept by strength and
measured where they match CFG's IS.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from ..core.checks import check_choice, check_positive_int
from ..core.guidance import EpsModel, interval_weight, unconditional
from ..core.guidance_methods import METHODS as GUIDANCE_METHODS
from ..core.guidance_methods import Guidance
from ..core.samplers import evaluations, steps_for
from ..core.schedule import LogSNRSchedule
from ..core.tensors import make_generator
from .beyond_cfg import guidance_term_curl, matched_strength
from .correctors import LangevinCorrector
from .grid import Grid2D, HistogramTV, TiltedTargets, sample_from_grid
from .ideal import IdealTiltedModel
from .metrics import (
    bayes_inception_score,
    class_variance,
    fit_logistic_classifier,
    frechet_per_class,
    frechet_pooled,
    kl_to_grid,
    knn_entropy,
    logistic_inception_score,
    mmd2_rbf,
    precision_recall,
)
from .mixture import GaussianMixture
from .sampling import class_samples

# Kynkäänniemi et al. (2024) guide for EDM σ in (0.28, 5.42]: λ = −2 log σ in [−3.38, 2.55] (our transfer).
GUIDANCE_INTERVAL = (-2 * math.log(5.42), -2 * math.log(0.28))


@dataclass(frozen=True)
class SweepConfig:
    """What the sweep runs. Learned rows: every (p_uncond, T, w) with ancestral v = 0.3. Exact rows:
    ancestral v = 0.3 at every (T, w); the other samplers at T = detail_steps; the ideal sampler for
    ideal_ws; MALA corrector rows (K steps per level) at T = corrector_T for corrector_ws. NFE rows: every sampler of
    NFE_SAMPLERS at each of `nfes` evaluations for nfe_ws. Method rows: each guidance method at each of its
    strengths (DDIM, T = detail_steps), exact and with the learned p_unconds[0] model (autoguided by a weak_width-wide
    MLP trained weak_train_steps), then once more at the strength whose IS matches CFG's at match_w."""

    ws: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0, 2.0, 3.0, 4.0)
    p_unconds: tuple[float, ...] = (0.1, 0.2, 0.5)
    steps: tuple[int, ...] = (32, 128, 512)
    samples_per_class: int = 2000  # learned rows
    exact_samples_per_class: int = 5000  # exact-ε* rows
    detail_steps: int = 128
    ideal_ws: tuple[float, ...] = (0.0, 1.0, 3.0)
    ideal_grid: int = 128
    corrector_ws: tuple[float, ...] = (3.0,)
    corrector_steps: tuple[int, ...] = (0, 1, 4, 16)
    corrector_T: int = 32
    metric_points: int = 2000  # subsample for precision/recall and MMD
    train_steps: int = 3000
    tv_bins: int = 32
    boundary_w: float = 3.0
    nfes: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    nfe_ws: tuple[float, ...] = (0.0, 3.0)
    match_w: float = 3.0
    method_strengths: tuple[tuple[str, tuple[float, ...]], ...] = (
        ("cfg", (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0)),
        ("autoguidance", (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)),
        ("apg", (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0)),
        ("cfg++", (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)))
    weak_width: int = 32
    weak_train_steps: int = 750
    seed: int = 0

    def __post_init__(self):
        for name in ("samples_per_class", "exact_samples_per_class", "detail_steps", "ideal_grid", "corrector_T",
                     "metric_points", "train_steps", "tv_bins", "weak_width", "weak_train_steps"):
            check_positive_int(name, getattr(self, name))
        if not self.ws or any(not math.isfinite(w) or w < 0 for w in self.ws):
            raise ValueError(f"ws must be a non-empty tuple of finite w >= 0, got {self.ws}")
        if any(not 0 <= p <= 1 for p in self.p_unconds):
            raise ValueError(f"p_unconds must lie in [0, 1], got {self.p_unconds}")
        if not self.steps or any(int(t) != t or t < 1 for t in self.steps):
            raise ValueError(f"steps must be a non-empty tuple of integers >= 1, got {self.steps}")
        if any(int(k) != k or k < 0 for k in self.corrector_steps):
            raise ValueError(f"corrector_steps must be integers >= 0, got {self.corrector_steps}")
        for nfe in self.nfes:  # every sampler must cost exactly nfe: Heun's evaluations are even
            steps_for("heun", nfe)
        strengths = dict(self.method_strengths)
        for method in strengths:
            check_choice("method_strengths' method", method, GUIDANCE_METHODS)
        if self.match_w not in strengths.get("cfg", ()):
            raise ValueError(f"match_w={self.match_w:g} must be one of the cfg strengths, {strengths.get('cfg')}")


# Named sweeps: the full one of the README, and a CI-sized one (about a minute on 2 cores).
SWEEPS: dict[str, SweepConfig] = {
    "full": SweepConfig(),
    "fast": SweepConfig(ws=(0.0, 0.5, 1.0, 3.0), p_unconds=(0.1, 0.5), steps=(16, 64), samples_per_class=400,
                        exact_samples_per_class=800, detail_steps=64, ideal_ws=(3.0,), ideal_grid=64,
                        corrector_steps=(0, 1, 4), corrector_T=16, metric_points=500, train_steps=300,
                        nfes=(8, 32, 128), weak_train_steps=100,
                        method_strengths=(("cfg", (0.0, 1.0, 3.0)), ("autoguidance", (0.0, 2.0, 6.0)),
                                          ("apg", (0.0, 4.0, 16.0)), ("cfg++", (0.0, 0.1, 0.3)))),
}


@dataclass(frozen=True)
class SamplerSpec:
    """A named way to sample: Algorithm 2's ancestral step with exponent v, or a deterministic method (DDIM, Heun,
    DPM-Solver++(2M)); optional corrector steps; a constant w or a λ-dependent guidance weight (interval, schedule)."""

    name: str
    method: str = "ancestral"
    v: float = 0.3
    corrector_steps: int = 0
    weight: str = "constant"  # constant | interval | schedule

    def samples(self, eps_model: EpsModel, num_classes: int, w, per_class: int, steps: int, seed: int,
                **options) -> torch.Tensor:
        """class_samples drawn this way with guidance w (or a λ-dependent weight), (K, per_class, 2) float64; the
        same seed for every w. `options` go to class_samples (dtype, corrector, schedule)."""
        return class_samples(eps_model, num_classes, w, per_class, generator=make_generator(seed), steps=steps,
                             v=self.v, method=self.method, **options)


SAMPLERS = {spec.name: spec for spec in (
    SamplerSpec("ancestral-v0", v=0.0), SamplerSpec("ancestral-v0.3"), SamplerSpec("ancestral-v1", v=1.0),
    SamplerSpec("ddim", method="ddim", v=0.0), SamplerSpec("heun", method="heun", v=0.0),
    SamplerSpec("dpm++2m", method="dpm++2m", v=0.0), SamplerSpec("interval", weight="interval"),
    SamplerSpec("schedule", weight="schedule"))}
NFE_SAMPLERS = ("ancestral-v0.3", "ddim", "heun", "dpm++2m")
PARTS = ("tradeoff", "nfe", "methods")  # what run_sweep runs: notebook 04 the first, notebook 05 the others


def linear_schedule_weight(w: float, schedule: LogSNRSchedule = LogSNRSchedule()) -> Callable:
    """w(λ) = 2w·(1 − u(λ)): guidance rising linearly from 0 at the noise end to 2w at the data end, mean w
    over the sampling grid (the 'linear' scheduler of Wang et al. 2024)."""
    return lambda lam: 2 * w * (1 - schedule.u(lam))


def guidance_weight(spec: SamplerSpec, w: float):
    if spec.weight == "interval":
        return interval_weight(w, *GUIDANCE_INTERVAL)
    if spec.weight == "schedule":
        return linear_schedule_weight(w)
    return w


class Evaluator:
    """Every reference the metrics need, computed once: tilted targets and floors per w, fresh data draws,
    a logistic regression fitted on data."""

    def __init__(self, mixture: GaussianMixture, config: SweepConfig):
        self.mixture, self.config = mixture, config
        self.grid = Grid2D.covering(mixture, n=config.tv_bins * 12)
        self.histogram = HistogramTV(self.grid, config.tv_bins)
        generator = make_generator(config.seed + 1000)
        train = torch.cat([mixture.sample(2000, c, generator) for c in range(mixture.num_classes)])
        self.classifier = fit_logistic_classifier(train, torch.arange(mixture.num_classes).repeat_interleave(2000))
        self.data = mixture.sample(config.metric_points, None, generator)  # (M, 2) reference for P/R, MMD
        self.generator = generator
        self.target = TiltedTargets(mixture, self.grid)  # w -> π_w(x|c) on the grid for every class, (K, n, n)
        self._floors: dict[tuple[float, int], float] = {}

    def floor(self, w: float, n: int) -> float:
        """Mean over classes of the TV of n exact draws from π_w(x|c)."""
        if (w, n) not in self._floors:
            self._floors[(w, n)] = sum(self.histogram.noise_floor(d, n, self.generator) for d in self.target(w)) \
                / self.mixture.num_classes
        return self._floors[(w, n)]

    def __call__(self, samples: torch.Tensor, tv_w: float) -> dict:
        """All metrics of per-class samples (K, N, 2), the TV and KL against the tilted target π_{tv_w}."""
        K, n, _ = samples.shape
        pooled = samples.reshape(-1, 2)
        labels = torch.arange(K).repeat_interleave(n)
        subset = pooled[torch.randperm(len(pooled), generator=self.generator)[:self.config.metric_points]]
        precision, recall = precision_recall(self.data, subset)
        target = self.target(tv_w)
        return {"fd": frechet_pooled(self.mixture, pooled, labels),
                "is_bayes": bayes_inception_score(self.mixture, pooled),
                "is_logreg": logistic_inception_score(self.classifier, pooled),
                "precision": precision, "recall": recall,
                "tv_to_target": sum(self.histogram(samples[c], target[c]) for c in range(K)) / K,
                "tv_noise_floor": self.floor(tv_w, n),
                "fd_class": sum(frechet_per_class(self.mixture, samples)) / K,
                "kl_to_target": sum(kl_to_grid(self.histogram, samples[c], target[c]) for c in range(K)) / K,
                "mmd2": mmd2_rbf(self.data, subset),
                "class_variance": sum(class_variance(samples[c]) for c in range(K)) / K,
                "entropy": sum(knn_entropy(samples[c]) for c in range(K)) / K}


@dataclass
class Sweep:
    """The rows of tradeoff.csv, and the samples kept for the boundary-push plot (sampler -> (K, N, 2))."""

    config: SweepConfig
    rows: list[dict] = field(default_factory=list)
    boundary: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0

    def select(self, **where) -> list[dict]:
        return [r for r in self.rows if all(r[k] == v for k, v in where.items())]


@dataclass(frozen=True)
class Job:
    """One row: which model (exact ε*, or the learned MLP of p_uncond), sampled how, at which strength w of which
    guidance method, and measured against π_{tv_w} (None: π_w). kind: cfg, ideal, mala, mala-final or method."""

    model: str
    p_uncond: float | str
    spec: SamplerSpec
    T: int
    w: float
    kind: str = "cfg"
    method: str = "cfg"
    tv_w: float | None = None
    match: str = ""  # "is": the strength matching CFG's IS at match_w; "max-is": none does, the best one


def _jobs(config: SweepConfig, learned: dict[float, EpsModel], guide: EpsModel | None,
          parts: tuple[str, ...]) -> list[Job]:
    """Every job of the sweep's parts before the matched ones, each once."""
    jobs = _tradeoff_jobs(config, learned) if "tradeoff" in parts else []
    if "nfe" in parts:
        jobs += [Job("exact", "", SAMPLERS[name], steps_for(SAMPLERS[name].method, nfe), w)
                 for w in config.nfe_ws for name in NFE_SAMPLERS for nfe in config.nfes]
    if "methods" in parts:
        jobs += [Job(model, p, SAMPLERS["ddim"], config.detail_steps, w, "method", method, config.match_w)
                 for model, p, method in _method_models(config, learned, guide)
                 for w in dict(config.method_strengths)[method]]
    return list(dict.fromkeys(jobs))  # a frozen Job is its own key: each distinct one once, in order


def _tradeoff_jobs(config: SweepConfig, learned: dict[float, EpsModel]) -> list[Job]:
    """The paper's sweep and the samplers that aim at π_w."""
    jobs = [Job("learned", p, SAMPLERS["ancestral-v0.3"], T, w)
            for p in config.p_unconds if p in learned for T in config.steps for w in config.ws]
    jobs += [Job("exact", "", SAMPLERS["ancestral-v0.3"], T, w) for T in config.steps for w in config.ws]
    detail = ("ancestral-v0.3", "ancestral-v0", "ancestral-v1", "ddim", "interval", "schedule")
    jobs += [Job("exact", "", SAMPLERS[name], config.detail_steps, w) for name in detail for w in config.ws]
    jobs += [Job("exact", "", SamplerSpec("ideal", method="ddim"), config.detail_steps, w, "ideal")
             for w in config.ideal_ws]
    jobs += [Job("exact", "", SamplerSpec("ancestral-v0.3+mala", corrector_steps=k), config.corrector_T, w, "mala")
             for w in config.corrector_ws for k in config.corrector_steps]
    jobs += [Job("exact", "", SamplerSpec("ancestral-v0.3+mala@λmax", corrector_steps=k), config.corrector_T, w,
                 "mala-final") for w in config.corrector_ws for k in config.corrector_steps if k]
    return jobs


def _method_models(config: SweepConfig, learned: dict[float, EpsModel], guide: EpsModel | None) -> list[tuple]:
    """(model, p_uncond, method) of every method sweep: exact ε* with each method but autoguidance (it needs a
    weaker model), and the learned model of p_unconds[0], when there is one, with each (autoguidance given a guide)."""
    methods = [name for name, _ in config.method_strengths]
    pairs = [("exact", "", m) for m in methods if m != "autoguidance"]
    if config.p_unconds and config.p_unconds[0] in learned:
        pairs += [("learned", config.p_unconds[0], m) for m in methods if m != "autoguidance" or guide is not None]
    return pairs


def _matched_jobs(sweep: Sweep, config: SweepConfig, pairs: list[tuple]) -> list[Job]:
    """For every method sweep, a job at the strength whose Bayes IS matches CFG's at match_w on the same model."""
    jobs = []
    for model, p, method in pairs:
        cfg = sweep.select(model=model, p_uncond=p, kind="method", method="cfg", w=config.match_w)[0]
        rows = sweep.select(model=model, p_uncond=p, kind="method", method=method)
        w, reached = matched_strength([r["w"] for r in rows], [r["is_bayes"] for r in rows], cfg["is_bayes"])
        jobs.append(Job(model, p, SAMPLERS["ddim"], config.detail_steps, w, "method", method, config.match_w,
                        "is" if reached else "max-is"))
    return jobs


def _final_mala(mixture: GaussianMixture, samples: torch.Tensor, w: float, steps: int, seed: int) -> torch.Tensor:
    """`steps` MALA steps on π_w itself (at λ_max, where ρ_λ is π_w) applied to finished samples (K, N, 2)."""
    K, n, _ = samples.shape
    labels = torch.arange(K).repeat_interleave(n)
    lam_max = torch.full((K * n,), LogSNRSchedule().lambda_max, dtype=torch.float64)
    corrected = LangevinCorrector(mixture, w, steps)(samples.reshape(-1, 2), lam_max, labels, make_generator(seed))
    return corrected.reshape(K, n, 2)


def _guidance(job: Job, guide: EpsModel | None) -> Guidance:
    return Guidance(job.method, guide=guide) if job.method == "autoguidance" else Guidance(job.method)


def _draw(job: Job, mixture: GaussianMixture, config: SweepConfig, learned: dict, guide) -> torch.Tensor:
    """The job's samples, (K, N, 2) float64."""
    K, spec = mixture.num_classes, job.spec
    if job.kind == "ideal":
        ideal = IdealTiltedModel(mixture, job.w, Grid2D.covering(mixture, n=config.ideal_grid))
        return spec.samples(ideal, K, 0.0, config.exact_samples_per_class, job.T, config.seed,
                            schedule=ideal.schedule())
    if job.model == "learned":
        return spec.samples(learned[job.p_uncond], K, job.w, config.samples_per_class, job.T, config.seed,
                            dtype=torch.float32, guidance=_guidance(job, guide))
    corrector = LangevinCorrector(mixture, job.w, spec.corrector_steps) if spec.corrector_steps else None
    samples = spec.samples(mixture, K, guidance_weight(spec, job.w), config.exact_samples_per_class, job.T,
                           config.seed, corrector=None if job.kind == "mala-final" else corrector,
                           guidance=_guidance(job, guide))
    if job.kind == "mala-final":  # the same budget, K steps per level × T levels, spent only at λ_max
        samples = _final_mala(mixture, samples, job.w, spec.corrector_steps * job.T, config.seed)
    return samples


def _run_job(job: Job, mixture, config, evaluator, learned, guide) -> tuple[dict, torch.Tensor]:
    start = time.perf_counter()
    samples = _draw(job, mixture, config, learned, guide)
    tv_w = job.w if job.tv_w is None else job.tv_w
    row = {"model": job.model, "sampler": job.spec.name, "p_uncond": job.p_uncond, "T": job.T, "w": job.w,
           "method": job.method, "nfe": evaluations(job.spec.method, job.T), "kind": job.kind, "tv_w": tv_w,
           "match": job.match, **evaluator(samples, tv_w),
           "corrector_steps": job.spec.corrector_steps if job.kind.startswith("mala") else "",
           "guidance_curl": _guidance_curl(job, mixture, learned, guide)}
    row["seconds"] = time.perf_counter() - start
    return row, samples


def _guidance_curl(job: Job, mixture: GaussianMixture, learned: dict, guide) -> float | str:
    """The relative curl of the guidance term of matched CFG and autoguidance rows (cfgedu.toy.beyond_cfg); '' for
    the others (APG's and CFG++'s updates are no fixed field of z)."""
    if not job.match or job.method not in ("cfg", "autoguidance"):
        return ""
    model = mixture if job.model == "exact" else learned[job.p_uncond]
    reference = guide if job.method == "autoguidance" else unconditional(model, mixture.num_classes)
    return guidance_term_curl(model, reference)


def _boundary_label(row: dict, config: SweepConfig) -> str | None:
    """Which exact-ε* rows at w = boundary_w feed the boundary-push plot, and under what name."""
    if row["model"] != "exact" or row["w"] != config.boundary_w or row["kind"] == "method":
        return None
    if row["sampler"] in ("ancestral-v0.3", "ddim", "ideal") and row["T"] == config.detail_steps:
        return f"{row['sampler']} T={row['T']}"
    if row["sampler"] == "ancestral-v0.3+mala" and row["corrector_steps"] == max(config.corrector_steps) > 0:
        return f"ancestral-v0.3 T={row['T']} + MALA m={row['corrector_steps']}"
    return None


def run_sweep(config: SweepConfig = SweepConfig(), learned: dict[float, EpsModel] | None = None, *,
              guide: EpsModel | None = None, mixture: GaussianMixture | None = None, parts: tuple[str, ...] = PARTS,
              progress: bool = True) -> Sweep:
    """Every row of the sweep's `parts` (PARTS: the trade-off, the NFE rows, the guidance methods); `learned` maps
    p_uncond to a trained toy eps_model (missing ones are skipped) and `guide` is the weaker model that autoguides
    learned[p_unconds[0]] (None: no autoguidance rows)."""
    start = time.perf_counter()
    mixture, learned = mixture or GaussianMixture.three_gaussians(), learned or {}
    evaluator = Evaluator(mixture, config)
    sweep = Sweep(config)
    for part in parts:
        check_choice("part", part, PARTS)
    jobs = _jobs(config, learned, guide, parts)
    pairs = _method_models(config, learned, guide) if "methods" in parts else []
    bar = tqdm(total=len(jobs) + len(pairs), desc="trade-off sweep", disable=not progress)
    for phase in (lambda: jobs, lambda: _matched_jobs(sweep, config, pairs)):
        for job in phase():
            row, samples = _run_job(job, mixture, config, evaluator, learned, guide)
            sweep.rows.append(row)
            label = _boundary_label(row, config)
            if label:
                sweep.boundary[label] = samples
            bar.update()
    bar.close()
    sweep.boundary["target"] = torch.stack([sample_from_grid(evaluator.grid, d, config.exact_samples_per_class,
                                                             evaluator.generator)
                                            for d in evaluator.target(config.boundary_w)])
    sweep.seconds = time.perf_counter() - start
    return sweep


def with_overrides(config: SweepConfig, **overrides) -> SweepConfig:
    """dataclasses.replace, skipping None values (CLI flags left unset)."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
