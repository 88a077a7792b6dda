"""The trade-off sweep as text: its rows as CSV, and Markdown tables shaped like the paper's Tables 1-2."""
from __future__ import annotations

import csv
import io

from .tradeoff import Sweep

COLUMNS = ("model", "sampler", "p_uncond", "T", "w", "fd", "is_bayes", "is_logreg", "precision", "recall",
           "tv_to_target", "tv_noise_floor", "fd_class", "kl_to_target", "mmd2", "entropy", "class_variance",
           "corrector_steps", "seconds")


def csv_text(sweep: Sweep) -> str:
    """The sweep's rows as CSV, floats to 6 significant digits."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    for row in sweep.rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return text.getvalue()


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
    """MALA rows: K steps at every level, and the same K·T steps spent only at λ_max (where ρ_λ is π_w)."""
    rows = sweep.select(model="exact", sampler="ancestral-v0.3+mala")
    rows += sweep.select(model="exact", sampler="ancestral-v0.3+mala@λmax")
    return _markdown(["w", "where", "m (MALA steps per level)", "T", "TV to π_w", "noise floor", "IS (Bayes)", "FD"],
                     [[f"{r['w']:g}", "only at λ_max" if r["sampler"].endswith("λmax") else "every level",
                       str(r["corrector_steps"]), str(r["T"]), f"{r['tv_to_target']:.3f}", f"{r['tv_noise_floor']:.3f}",
                       f"{r['is_bayes']:.3f}", f"{r['fd']:.3f}"] for r in rows])


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
