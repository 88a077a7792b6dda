"""`python -m cfgedu bench-figure2`: how long `figure2` takes on an idle machine and beside one busy process."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

from ._threads import TOY_THREADS

HELP = ("Time `python -m cfgedu figure2` (the whole command: imports, sampling, plot) on this machine as it is, then "
        "again beside one CPU-bound process that this command starts and always stops; print both and their ratio.")

# One CPU-bound process, as a second user of the machine would be; it ends by itself once its parent (the pid given
# as its argument) has died, should that parent be killed before it can stop it.
BUSY_LOOP = "import os, sys\nwhile os.getppid() == int(sys.argv[1]):\n    for _ in range(10**6): pass"


def add_arguments(parser):
    parser.add_argument("--samples-per-class", type=int, default=20_000, help="figure2's samples per class")
    parser.add_argument("--steps", type=int, default=256, help="figure2's sampling steps T")
    parser.add_argument("--threads", type=int, nargs="+", default=[TOY_THREADS],
                        help="figure2's --threads; several values are timed one after the other")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each setting (the median is shown)")


@contextmanager
def busy_process():
    """A CPU-bound child process for the duration of the block, stopped on the way out however the block ends."""
    process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(os.getpid())])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def time_figure2(args, threads: int) -> float:
    """Wall-clock seconds of one `python -m cfgedu figure2` run in a child process (its output is discarded)."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "cfgedu", "figure2", "--out", out, "--samples-per-class",
                   str(args.samples_per_class), "--steps", str(args.steps), "--threads", str(threads)]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def run(args) -> None:
    import statistics

    from ..core.checks import check_positive_int

    repeats = check_positive_int("repeats", args.repeats)
    print(f"{'threads':>7} {'idle s':>8} {'loaded s':>9} {'loaded/idle':>11}")
    for threads in args.threads:
        idle = statistics.median(time_figure2(args, threads) for _ in range(repeats))
        with busy_process() as busy:
            loaded = statistics.median(time_figure2(args, threads) for _ in range(repeats))
        print(f"{threads:>7} {idle:8.2f} {loaded:9.2f} {loaded / idle:11.2f}")
    print(f"busy process {busy.pid} stopped (exit status {busy.returncode})")
