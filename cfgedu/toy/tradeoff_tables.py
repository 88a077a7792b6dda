"""The trade-off sweep as text: its rows as CSV, and Markdown tables shaped like the paper's Tables 1-2."""
from __future__ import annotations

import csv
import io

from .tradeoff import NFE_SAMPLERS, Sweep

COLUMNS = ("model", "sampler", "p_uncond", "T", "w", "fd", "is_bayes", "is_logreg", "precision", "recall",
           "tv_to_target", "tv_noise_floor", "fd_class", "kl_to_target", "mmd2", "entropy", "class_variance",
           "corrector_steps", "method", "nfe", "kind", "tv_w", "match", "guidance_curl", "seconds")


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
                match = sweep.select(w=w, kind="cfg", **{column_key: v}, **where)
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
            kind = "ideal" if name == "ideal" else "cfg"
            match = sweep.select(model="exact", sampler=name, T=sweep.config.detail_steps, w=w, kind=kind)
            cells.append(f"{match[0]['tv_to_target']:.3f}" if match else "")
        floor = sweep.select(model="exact", T=sweep.config.detail_steps, w=w, kind="cfg")
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


def nfe_table(sweep: Sweep, w: float) -> str:
    """TV to π_w with exact ε* against the number of network evaluations (rows), one column per sampler, with the
    noise floor of the same number of draws."""
    lines = []
    for nfe in sweep.config.nfes:
        rows = {name: sweep.select(model="exact", sampler=name, nfe=nfe, w=w, kind="cfg") for name in NFE_SAMPLERS}
        floor = next((found[0]["tv_noise_floor"] for found in rows.values() if found), None)
        lines.append([str(nfe)] + [f"{found[0]['tv_to_target']:.3f}" if found else "" for found in rows.values()]
                     + [f"{floor:.3f}" if floor is not None else ""])
    return _markdown(["NFE"] + [f"TV {name}" for name in NFE_SAMPLERS] + ["noise floor"], lines)


def method_table(sweep: Sweep) -> str:
    """Each guidance method at the strength whose Bayes IS matches CFG's at match_w on the same model (DDIM)."""
    c = sweep.config
    lines = []
    matched = [r for r in sweep.rows if r["kind"] == "method" and r["match"]]
    order = [name for name, _ in c.method_strengths]
    for r in sorted(matched, key=lambda r: (r["model"], order.index(r["method"]))):
        strength = f"{r['w']:.3g}" + ("" if r["match"] == "is" else " (highest IS; CFG's is out of reach)")
        curl = f"{100 * r['guidance_curl']:.2g}%" if r["guidance_curl"] != "" else ""
        lines.append([r["method"], r["model"], strength, f"{r['is_bayes']:.3f}", f"{r['fd']:.3f}",
                      f"{r['tv_to_target']:.3f}", f"{r['tv_noise_floor']:.3f}", f"{r['class_variance']:.3f}", curl])
    return (f"DDIM, T = {c.detail_steps}; strength: w for cfg, autoguidance and apg (s = 1 + w), l for cfg++; TV "
            f"against π_w at w = {c.match_w:g}; the data's per-class variance is 0.36; curl: the relative curl of "
            f"the guidance term, mean over λ in {{−2.25, 0, 2.25}}.\n\n"
            + _markdown(["method", "model", "strength", "IS (Bayes)", "FD", f"TV to π_{c.match_w:g}", "noise floor",
                         "per-class variance", "curl of guidance term"], lines))


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
    parts += [f"## Samplers: TV to π_w with exact ε* against the number of network evaluations, w = {w:g}\n\n"
              + nfe_table(sweep, w) for w in c.nfe_ws]
    parts += [f"## Guidance methods where their IS matches CFG's at w = {c.match_w:g}", method_table(sweep)]
    return "\n\n".join(parts) + "\n"
