"""`python -m cfgedu bench-widgets`: how long each notebook slider takes to update its figure."""
from __future__ import annotations

from ._threads import TOY_THREADS, add_threads_argument, set_threads

HELP = ("Time every notebook slider: the seconds from a new slider value to a re-rendered figure "
        "(recomputation plus PNG rendering), median and worst over several moves.")


def add_arguments(parser):
    parser.add_argument("--moves", type=int, default=8, help="slider moves timed per slider")
    parser.add_argument("--budget-ms", type=float, default=200.0, help="flag updates slower than this (median)")
    add_threads_argument(parser, TOY_THREADS)  # for drawing the panels; every slider update runs on one thread


def run(args) -> None:
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    from ..core.checks import check_positive_int
    from ..frontend.widgets import BENCHMARKS, time_sliders

    moves = check_positive_int("moves", args.moves)
    set_threads(args.threads)
    print(f"{'panel':<46} {'slider':<8} {'median ms':>9} {'max ms':>7}")
    for name, make in BENCHMARKS.items():
        for slider, seconds in time_sliders(make(), moves).items():
            median = 1000 * statistics.median(seconds)
            flag = "  over budget" if median > args.budget_ms else ""
            print(f"{name:<46} {slider:<8} {median:9.1f} {1000 * max(seconds):7.1f}{flag}")
