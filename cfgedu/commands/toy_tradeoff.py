"""`python -m cfgedu toy-tradeoff`: the paper's Tables 1-2 in miniature on the toy, and what CFG samples."""
from __future__ import annotations

from pathlib import Path

from ._paths import output_folder
from ._threads import TOY_THREADS, add_threads_argument, set_threads

HELP = ("Sweep the guidance strength w (paper's w; scale s = 1 + w), p_uncond of learned toy MLPs and the number "
        "of sampling steps T; measure four samplers' TV to the target against their number of network evaluations "
        "(NFE); sweep the guidance methods that followed CFG (autoguidance, APG, CFG++) and measure each where its IS "
        "matches CFG's at w = 3. Writes tradeoff.csv, Markdown tables shaped like the paper's Tables 1-2 and of the "
        "samplers and methods, the FD-vs-IS and TV-vs-NFE plots and boundary-push histograms. Learned models (and the "
        "weak model that autoguides them) are trained once and cached in OUT/models.")


def add_arguments(parser):
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--fast", action="store_true", help="a CI-sized sweep (under a minute)")
    parser.add_argument("--train-steps", type=int, default=None, help="training steps of each learned MLP")
    parser.add_argument("--seed", type=int, default=None, help="seed of training and sampling")
    add_threads_argument(parser, TOY_THREADS)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ..toy.tradeoff import SWEEPS, run_sweep, with_overrides

    output_folder(args.out)
    set_threads(args.threads)
    config = with_overrides(SWEEPS["fast" if args.fast else "full"], train_steps=args.train_steps, seed=args.seed)
    progress = not args.no_progress
    models = learned_models(args.out / "models", config, progress=progress)
    guide = weak_model(args.out / "models", config, progress=progress)
    sweep = run_sweep(config, models, guide=guide, progress=progress)
    paths = write_outputs(sweep, args.out)
    print(paths["md"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}; sweep {sweep.seconds:.0f} s")


def learned_models(folder: Path, config, progress: bool = True) -> dict:
    """The toy ε-MLP of every p_uncond of the sweep: a run folder each under `folder`, trained by the toy preset the
    first time and read back (the run is already at its last step) every time after."""
    from ..engine.experiment import train_experiment
    from ..engine.presets import toy_experiment

    runs = {p: toy_experiment("mlp", config.train_steps, p_uncond=p, seed=config.seed) for p in config.p_unconds}
    return {p: train_experiment(experiment, folder / run_name(p, config), preset_name="toy",
                                progress=progress).ema.eval()
            for p, experiment in runs.items()}


def weak_model(folder: Path, config, progress: bool = True):
    """The weaker conditional ε-MLP that autoguides the learned model of p_unconds[0]: the same code and data, but
    config.weak_width wide and trained config.weak_train_steps steps; cached like learned_models'."""
    from ..engine.experiment import train_experiment
    from ..engine.presets import toy_experiment

    p_uncond = config.p_unconds[0] if config.p_unconds else 0.1
    experiment = toy_experiment("mlp", config.weak_train_steps, p_uncond=p_uncond, seed=config.seed,
                                width=config.weak_width)
    name = f"weak,width={config.weak_width},steps={config.weak_train_steps},seed={config.seed}"
    return train_experiment(experiment, folder / name, preset_name="toy", progress=progress).ema.eval()


def run_name(p_uncond: float, config) -> str:
    """The run folder of one learned model: its p_uncond, steps and seed, so another sweep never reuses it."""
    return f"p_uncond={p_uncond:g},steps={config.train_steps},seed={config.seed}"


def write_outputs(sweep, out: Path) -> dict[str, Path]:
    """tradeoff.csv, tradeoff.md, tradeoff.png (FD against IS), tv_nfe.png (TV against NFE per sampler),
    boundary_push.png and sweep_config.json in out."""
    from dataclasses import asdict

    import matplotlib.pyplot as plt

    from ..core.io import atomic_savefig, atomic_write_json, atomic_write_text
    from ..frontend.plotting import plot_boundary_push, plot_tradeoff, plot_tv_against_nfe
    from ..toy.mixture import GaussianMixture
    from ..toy.tradeoff_tables import csv_text, tables_markdown

    paths = {"csv": atomic_write_text(csv_text(sweep), out / "tradeoff.csv"),
             "md": atomic_write_text(tables_markdown(sweep), out / "tradeoff.md"),
             "config": atomic_write_json(asdict(sweep.config), out / "sweep_config.json")}
    mixture = GaussianMixture.three_gaussians()
    drawings = (("plot", "tradeoff", lambda fig: plot_tradeoff(sweep, fig.subplots())),
                ("boundary", "boundary_push", lambda fig: plot_boundary_push(sweep, mixture, ax=fig.subplots())),
                ("nfe", "tv_nfe", lambda fig: plot_tv_against_nfe(sweep, fig)))
    for key, name, draw in drawings:
        fig = plt.figure(figsize=(10, 4) if key == "nfe" else (6.5, 4.5))
        draw(fig)
        fig.tight_layout()
        paths[key] = atomic_savefig(fig, out / f"{name}.png", dpi=120)
        plt.close(fig)
    return paths
