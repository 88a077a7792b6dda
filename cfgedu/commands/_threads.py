"""`--threads` for every command that computes: how many CPU threads torch uses, with a default measured for the
kind of work the command does.

Measured on a 2-core machine beside one CPU-bound process (`python -m cfgedu bench-figure2 --threads 1 2`):
- toy work, tensors of 10^4-10^6 elements (figure2, fields, toy-train, toy-tradeoff, bench-widgets): one thread.
  figure2 took 9.5 s on one thread and 10.6 s on two: a second thread gains nothing on such small operations, and
  beside a busy process it waits for the core the other one holds. The notebooks' sliders run on one thread too
  (frontend/widgets/base.single_threaded);
- networks on images (train, sample, evaluate, bench): one thread per core, torch's default.
Between parallel regions torch's OpenMP workers sleep rather than spin: `import cfgedu` sets OMP_WAIT_POLICY=PASSIVE
unless it is set already (cfgedu/__init__.py); on the busy machine a probe of small 2-thread operations took 0.8 s
with it and 3.9-5.5 s without.
"""
from __future__ import annotations

TOY_THREADS = 1  # small 2D tensors: one thread
DEFAULT_THREADS = 0  # networks: torch's default, one thread per core


def add_threads_argument(parser, default: int) -> None:
    """--threads N with the command's measured default (0 means torch's default, one thread per core)."""
    parser.add_argument("--threads", type=int, default=default,
                        help="torch CPU threads (0: one per core); defaults measured in cfgedu/commands/_threads.py")


def set_threads(threads: int) -> None:
    """torch's CPU threads (0 keeps its default, one per core)."""
    if threads < 0:
        raise ValueError(f"--threads must be >= 0, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)
