"""The guidance trade-off on the toy: the paper's Tables 1-2 in miniature, and what CFG really samples.

Sweeps w (and p_uncond for learned MLPs, and the number of steps T) and measures each sample set with
cfgedu.toy.metrics: the Fréchet distance to the data (the FID axis), the Inception score with the exact Bayes
posterior and with a logistic regression (the IS axis), k-NN precision/recall, and the TV distance to the
tilted target π_w(x|c) ∝ p(x|c)p(c|x)^w with its sampling-noise floor (SPEC Sec. 6). Exact-ε* rows add
samplers the paper does not try: ancestral at v = 0 / 0.3 / 1, DDIM, the ideal tilted sampler, MALA
correctors, guidance on a λ interval and a w schedule.
"""
from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..core.checks import check_positive_int
from .correctors import LangevinCorrector
from .mixture import GaussianMixture
from .grid import Grid2D, HistogramTV, sample_from_grid, tilted_densities
from ..core.guidance import EpsModel, guided, interval_weight
from .ideal import IdealTiltedModel
from ..core.io import atomic_savefig, atomic_write_json, atomic_write_text
from .metrics import (bayes_inception_score, fit_logistic_classifier, frechet_per_class, frechet_pooled, kl_to_grid,
                      knn_entropy, logistic_inception_score, mmd2_rbf, precision_recall, radial_distances)
from ..core.samplers import sample
from ..core.schedule import LogSNRSchedule
from ..core.tensors import make_generator

COLUMNS = ("model", "sampler", "p_uncond", "T", "w", "fd", "is_bayes", "is_logreg", "precision", "recall",
           "tv_to_target", "tv_noise_floor", "fd_class", "kl_to_target", "mmd2", "entropy", "corrector_steps",
           "seconds")
# Kynkäänniemi et al. (2024) guide for EDM σ in (0.28, 5.42]: λ = −2 log σ in [−3.38, 2.55] (our transfer).
GUIDANCE_INTERVAL = (-2 * math.log(5.42), -2 * math.log(0.28))


@dataclass(frozen=True)
class SweepConfig:
    """What the sweep runs. Learned rows: every (p_uncond, T, w) with ancestral v = 0.3. Exact rows:
    ancestral v = 0.3 at every (T, w); the other samplers at T = detail_steps; the ideal sampler for
    ideal_ws; MALA corrector rows (K steps per level) at T = corrector_T for corrector_ws."""

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
    seed: int = 0

    @classmethod
    def fast(cls) -> "SweepConfig":
        """A CI-sized sweep (about a minute on 2 cores)."""
        return cls(ws=(0.0, 0.5, 1.0, 3.0), p_unconds=(0.1, 0.5), steps=(16, 64), samples_per_class=400,
                   exact_samples_per_class=800, detail_steps=64, ideal_ws=(3.0,), ideal_grid=64,
                   corrector_steps=(0, 1, 4), corrector_T=16, metric_points=500, train_steps=300)

    def __post_init__(self):
        for name in ("samples_per_class", "exact_samples_per_class", "detail_steps", "ideal_grid", "corrector_T",
                     "metric_points", "train_steps", "tv_bins"):
            check_positive_int(name, getattr(self, name))
        if not self.ws or any(not math.isfinite(w) or w < 0 for w in self.ws):
            raise ValueError(f"ws must be a non-empty tuple of finite w >= 0, got {self.ws}")
        if any(not 0 <= p <= 1 for p in self.p_unconds):
            raise ValueError(f"p_unconds must lie in [0, 1], got {self.p_unconds}")
        if not self.steps or any(int(t) != t or t < 1 for t in self.steps):
            raise ValueError(f"steps must be a non-empty tuple of integers >= 1, got {self.steps}")
        if any(int(k) != k or k < 0 for k in self.corrector_steps):
            raise ValueError(f"corrector_steps must be integers >= 0, got {self.corrector_steps}")


@dataclass(frozen=True)
class SamplerSpec:
    """A named way to sample: Algorithm 2's ancestral step with exponent v, or DDIM; optional corrector
    steps; a constant w or a λ-dependent guidance weight (interval, schedule)."""

    name: str
    method: str = "ancestral"
    v: float = 0.3
    corrector_steps: int = 0
    weight: str = "constant"  # constant | interval | schedule


SAMPLERS = {spec.name: spec for spec in (
    SamplerSpec("ancestral-v0", v=0.0), SamplerSpec("ancestral-v0.3"), SamplerSpec("ancestral-v1", v=1.0),
    SamplerSpec("ddim", method="ddim", v=0.0), SamplerSpec("interval", weight="interval"),
    SamplerSpec("schedule", weight="schedule"))}


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
        self._targets: dict[float, torch.Tensor] = {}
        self._floors: dict[tuple[float, int], float] = {}

    def target(self, w: float) -> torch.Tensor:
        """π_w(x|c) on the grid for every class, (K, n, n)."""
        if w not in self._targets:
            self._targets[w] = tilted_densities(self.mixture, self.grid, w)
        return self._targets[w]

    def floor(self, w: float, n: int) -> float:
        """Mean over classes of the TV of n exact draws from π_w(x|c)."""
        if (w, n) not in self._floors:
            self._floors[(w, n)] = sum(self.histogram.noise_floor(d, n, self.generator) for d in self.target(w)) \
                / self.mixture.num_classes
        return self._floors[(w, n)]

    def __call__(self, samples: torch.Tensor, w: float) -> dict:
        """All metrics of per-class samples (K, N, 2) drawn for guidance w."""
        K, n, _ = samples.shape
        pooled = samples.reshape(-1, 2)
        labels = torch.arange(K).repeat_interleave(n)
        subset = pooled[torch.randperm(len(pooled), generator=self.generator)[:self.config.metric_points]]
        precision, recall = precision_recall(self.data, subset)
        target = self.target(w)
        return {"fd": frechet_pooled(self.mixture, pooled, labels),
                "is_bayes": bayes_inception_score(self.mixture, pooled),
                "is_logreg": logistic_inception_score(self.classifier, pooled),
                "precision": precision, "recall": recall,
                "tv_to_target": sum(self.histogram(samples[c], target[c]) for c in range(K)) / K,
                "tv_noise_floor": self.floor(w, n),
                "fd_class": sum(frechet_per_class(self.mixture, samples)) / K,
                "kl_to_target": sum(kl_to_grid(self.histogram, samples[c], target[c]) for c in range(K)) / K,
                "mmd2": mmd2_rbf(self.data, subset),
                "entropy": sum(knn_entropy(samples[c]) for c in range(K)) / K}


def draw(model: EpsModel, num_classes: int, weight, n: int, steps: int, spec: SamplerSpec, seed: int, *,
         dtype=torch.float64, corrector=None, schedule: LogSNRSchedule = LogSNRSchedule()) -> torch.Tensor:
    """n samples per class with CFG of the given weight; (K, n, 2) float64. The same seed for every w.
    Runs without autograd (ε-output networks and exact models)."""
    labels = torch.arange(num_classes).repeat_interleave(n)
    with torch.no_grad():
        x = sample(guided(model, weight, null_label=num_classes), (2,), labels, generator=make_generator(seed),
                   schedule=schedule, steps=steps, v=spec.v, method=spec.method, dtype=dtype, corrector=corrector)
    return x.to(torch.float64).reshape(num_classes, n, 2)


@dataclass
class Sweep:
    """The rows of tradeoff.csv, and the samples kept for the boundary-push plot (sampler -> (K, N, 2))."""

    config: SweepConfig
    rows: list[dict] = field(default_factory=list)
    boundary: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0

    def select(self, **where) -> list[dict]:
        return [r for r in self.rows if all(r[k] == v for k, v in where.items())]


def _jobs(config: SweepConfig, learned: dict[float, EpsModel]):
    """(model name, p_uncond, model or None for exact, sampler spec, T, w, kind) for every row."""
    jobs = [("learned", p, learned[p], SAMPLERS["ancestral-v0.3"], T, w, "cfg")
            for p in config.p_unconds if p in learned for T in config.steps for w in config.ws]
    jobs += [("exact", "", None, SAMPLERS["ancestral-v0.3"], T, w, "cfg") for T in config.steps for w in config.ws]
    detail = ("ancestral-v0", "ancestral-v1", "ddim", "interval", "schedule")
    detail = detail if config.detail_steps in config.steps else ("ancestral-v0.3", *detail)
    jobs += [("exact", "", None, SAMPLERS[name], config.detail_steps, w, "cfg") for name in detail for w in config.ws]
    jobs += [("exact", "", None, SamplerSpec("ideal", method="ddim"), config.detail_steps, w, "ideal")
             for w in config.ideal_ws]
    jobs += [("exact", "", None, SamplerSpec("ancestral-v0.3+mala", corrector_steps=k), config.corrector_T, w, "mala")
             for w in config.corrector_ws for k in config.corrector_steps]
    return jobs


def _run_job(mixture, config, evaluator, job) -> tuple[dict, torch.Tensor]:
    name, p_uncond, model, spec, T, w, kind = job
    start = time.perf_counter()
    K = mixture.num_classes
    if kind == "ideal":
        ideal = IdealTiltedModel(mixture, w, Grid2D.covering(mixture, n=config.ideal_grid))
        samples = draw(ideal, K, 0.0, config.exact_samples_per_class, T, spec, config.seed, schedule=ideal.schedule())
    elif name == "learned":
        samples = draw(model, K, w, config.samples_per_class, T, spec, config.seed, dtype=torch.float32)
    else:
        corrector = LangevinCorrector(mixture, w, spec.corrector_steps) if spec.corrector_steps else None
        samples = draw(mixture, K, guidance_weight(spec, w), config.exact_samples_per_class, T, spec, config.seed,
                       corrector=corrector)
    row = {"model": name, "sampler": spec.name, "p_uncond": p_uncond, "T": T, "w": w, **evaluator(samples, w),
           "corrector_steps": spec.corrector_steps if kind == "mala" else ""}
    row["seconds"] = time.perf_counter() - start
    return row, samples


def _boundary_label(row: dict, config: SweepConfig) -> str | None:
    """Which exact-ε* rows at w = boundary_w feed the boundary-push plot, and under what name."""
    if row["model"] != "exact" or row["w"] != config.boundary_w:
        return None
    if row["sampler"] in ("ancestral-v0.3", "ddim", "ideal") and row["T"] == config.detail_steps:
        return f"{row['sampler']} T={row['T']}"
    if row["sampler"] == "ancestral-v0.3+mala" and row["corrector_steps"] == max(config.corrector_steps) > 0:
        return f"ancestral-v0.3 T={row['T']} + MALA K={row['corrector_steps']}"
    return None


def run_sweep(config: SweepConfig = SweepConfig(), learned: dict[float, EpsModel] | None = None, *,
              mixture: GaussianMixture | None = None, progress: bool = True) -> Sweep:
    """Every row of the sweep; `learned` maps p_uncond to a trained toy eps_model (missing ones are skipped)."""
    start = time.perf_counter()
    mixture = mixture or GaussianMixture.three_gaussians()
    evaluator = Evaluator(mixture, config)
    sweep = Sweep(config)
    for job in tqdm(_jobs(config, learned or {}), desc="trade-off sweep", disable=not progress):
        row, samples = _run_job(mixture, config, evaluator, job)
        sweep.rows.append(row)
        label = _boundary_label(row, config)
        if label:
            sweep.boundary[label] = samples
    sweep.boundary["target"] = torch.stack([sample_from_grid(evaluator.grid, d, config.exact_samples_per_class,
                                                             evaluator.generator)
                                            for d in evaluator.target(config.boundary_w)])
    sweep.seconds = time.perf_counter() - start
    return sweep


# ---- learned models, cached in the output folder ---------------------------------------------------------------

def learned_models(out: Path, config: SweepConfig, progress: bool = True) -> dict[float, EpsModel]:
    """One toy ε-MLP per p_uncond, trained with cfgedu.toy (the shared training loop) or loaded from
    out/models/p_uncond=P/ when a run with the same steps and seed is there."""
    import json

    from ..nets.registry import load_model
    from .learned import write_toy_run

    models = {}
    for p in config.p_unconds:
        folder = Path(out) / "models" / f"p_uncond={p:g}"
        metrics_file = folder / "metrics.json"
        cached = metrics_file.is_file() and (folder / "model.pt").is_file() and \
            {k: json.loads(metrics_file.read_text()).get(k) for k in ("steps", "seed", "p_uncond")} == \
            {"steps": config.train_steps, "seed": config.seed, "p_uncond": p}
        if not cached:
            write_toy_run(folder, model="mlp", p_uncond=p, steps=config.train_steps, seed=config.seed,
                          progress=progress)
        models[p] = load_model(folder / "model.pt", expected_kinds=("mlp",))
    return models


# ---- outputs ------------------------------------------------------------------------------------------------

def write_csv(sweep: Sweep, path: Path) -> Path:
    """The sweep's rows as CSV (floats to 6 significant digits), written atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    for row in sweep.rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return atomic_write_text(text.getvalue(), path)


def _markdown(header: list[str], lines: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(line) + " |" for line in lines])


def metric_table(sweep: Sweep, column_key: str, columns: list, metrics=("fd", "is_bayes"), **where) -> str:
    """Rows w, columns `metric column_value` for each metric and each value of column_key (Tables 1-2 shape)."""
    header = ["w"] + [f"{'FD' if m == 'fd' else 'IS' if m == 'is_bayes' else m} {column_key}={v:g}"
                      for m in metrics for v in columns]
    lines = []
    for w in sweep.config.ws:
        cells = []
        for m in metrics:
            for v in columns:
                match = sweep.select(w=w, **{column_key: v}, **where)
                cells.append(f"{match[0][m]:.3f}" if match else "")
        lines.append([f"{w:g}"] + cells)
    return _markdown(header, lines)


def sampler_table(sweep: Sweep) -> str:
    """TV to the tilted target per exact-ε* sampler at T = detail_steps (rows w), with the noise floor."""
    names = ["ancestral-v0", "ancestral-v0.3", "ancestral-v1", "ddim", "ideal", "interval", "schedule"]
    lines = []
    for w in sweep.config.ws:
        cells = []
        for name in names:
            match = sweep.select(model="exact", sampler=name, T=sweep.config.detail_steps, w=w)
            cells.append(f"{match[0]['tv_to_target']:.3f}" if match else "")
        floor = sweep.select(model="exact", T=sweep.config.detail_steps, w=w)
        lines.append([f"{w:g}"] + cells + [f"{floor[0]['tv_noise_floor']:.3f}" if floor else ""])
    return _markdown(["w"] + [f"TV {n}" for n in names] + ["noise floor"], lines)


def corrector_table(sweep: Sweep) -> str:
    rows = sweep.select(model="exact", sampler="ancestral-v0.3+mala")
    return _markdown(["w", "K (MALA steps per level)", "T", "TV to π_w", "noise floor", "IS (Bayes)", "FD"],
                     [[f"{r['w']:g}", str(r["corrector_steps"]), str(r["T"]), f"{r['tv_to_target']:.3f}",
                       f"{r['tv_noise_floor']:.3f}", f"{r['is_bayes']:.3f}", f"{r['fd']:.3f}"] for r in rows])


def tables_markdown(sweep: Sweep) -> str:
    c = sweep.config
    T = max(c.steps)
    parts = [f"# Guidance trade-off on the three-Gaussian toy\n\nFD: Fréchet distance of Gaussian fits to the data "
             f"(the FID axis); IS: Inception score with the exact Bayes posterior. Sweep took {sweep.seconds:.0f} s."]
    if c.p_unconds:
        parts += [f"## Table 1 analogue: learned ε-MLP, ancestral v = 0.3, T = {T}; columns p_uncond",
                  metric_table(sweep, "p_uncond", list(c.p_unconds), model="learned", T=T),
                  f"## Table 2 analogue: learned ε-MLP (p_uncond = {c.p_unconds[0]:g}), ancestral v = 0.3; columns T",
                  metric_table(sweep, "T", list(c.steps), model="learned", p_uncond=c.p_unconds[0])]
    parts += ["## Table 2 with exact ε*: ancestral v = 0.3; columns T",
              metric_table(sweep, "T", list(c.steps), model="exact", sampler="ancestral-v0.3"),
              f"## What CFG samples: TV to π_w(x|c) with exact ε*, T = {c.detail_steps}",
              sampler_table(sweep),
              "## MALA corrector toward ρ_λ ∝ p_λ(z|c)^{1+w} p_λ(z)^{−w} at every level",
              corrector_table(sweep)]
    return "\n\n".join(parts) + "\n"


def plot_tradeoff(sweep: Sweep, ax=None):
    """FD against IS (Bayes): one curve per p_uncond (learned, largest T), the exact-ε* curve, and interval /
    schedule points; w increases along each curve."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 4.5))[1]
    T = max(sweep.config.steps)
    curves = [(f"learned p_uncond={p:g}", sweep.select(model="learned", p_uncond=p, T=T), "-o")
              for p in sweep.config.p_unconds]
    curves += [("exact ε*", sweep.select(model="exact", sampler="ancestral-v0.3", T=T), "-k^"),
               ("exact, guidance interval", sweep.select(model="exact", sampler="interval"), "s"),
               ("exact, linear w schedule", sweep.select(model="exact", sampler="schedule"), "D")]
    for label, rows, style in curves:
        if rows:
            ax.plot([r["is_bayes"] for r in rows], [r["fd"] for r in rows], style, label=label, ms=4)
    ax.set_xlabel("IS with the exact Bayes posterior (higher: more class-typical)")
    ax.set_ylabel("Fréchet distance to the data (lower: closer)")
    ax.set_title(f"Guidance trade-off on the toy (w from {min(sweep.config.ws):g} to {max(sweep.config.ws):g})")
    ax.legend(fontsize=8)
    return ax


def plot_boundary_push(sweep: Sweep, mixture: GaussianMixture, c: int = 0, ax=None):
    """Histograms of ‖x − μ_c‖ for class c: the target π_w against each sampler (SPEC 4.5, item 4)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 4))[1]
    bins = torch.linspace(0, 3, 61)
    for label, samples in sweep.boundary.items():
        r = radial_distances(samples[c], mixture.means[c])
        ax.hist(r.numpy(), bins=bins.numpy(), density=True, histtype="step", lw=2 if label == "target" else 1,
                color="k" if label == "target" else None, label=f"{label} (mean {r.mean():.2f})")
    ax.set_xlabel(f"distance from the class-{c} mean μ_{c}")
    ax.set_ylabel("density")
    ax.set_title(f"Boundary push at w = {sweep.config.boundary_w:g}")
    ax.legend(fontsize=7)
    return ax


def write_outputs(sweep: Sweep, out: Path, mixture: GaussianMixture | None = None) -> dict[str, Path]:
    """tradeoff.csv, tradeoff.md, tradeoff.png (FD vs IS), boundary_push.png and sweep_config.json in out."""
    import matplotlib.pyplot as plt

    out = Path(out)
    mixture = mixture or GaussianMixture.three_gaussians()
    paths = {"csv": write_csv(sweep, out / "tradeoff.csv"),
             "md": atomic_write_text(tables_markdown(sweep), out / "tradeoff.md"),
             "plot": out / "tradeoff.png", "boundary": out / "boundary_push.png",
             "config": atomic_write_json(asdict(sweep.config), out / "sweep_config.json")}
    for key, draw_plot in (("plot", lambda ax: plot_tradeoff(sweep, ax)),
                           ("boundary", lambda ax: plot_boundary_push(sweep, mixture, ax=ax))):
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        draw_plot(ax)
        fig.tight_layout()
        atomic_savefig(fig, paths[key], dpi=120)
        plt.close(fig)
    return paths


def with_overrides(config: SweepConfig, **overrides) -> SweepConfig:
    """dataclasses.replace, skipping None values (CLI flags left unset)."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
