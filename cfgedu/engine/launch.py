"""Driving a long run from a notebook or a shell: the torchrun command of a preset, and the metrics it logs."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.checks import check_positive_int


def launch_command(data: str | Path, out: str | Path, *, nproc_per_node: int = 8, nnodes: int = 1,
                   node_rank: int = 0, master_addr: str = "MASTER_HOST", master_port: int = 29500,
                   overrides: dict | None = None, launcher: tuple[str, ...] = ("torchrun",),
                   preset: str = "imagenet64") -> list[str]:
    """The command that trains `preset` (an ImageNet 64x64 preset) on `nnodes` machines of `nproc_per_node` GPUs.

    One machine: `torchrun --standalone`. Several: run the same command on every machine with its own
    --node_rank (0 .. nnodes-1); --master_addr/--master_port name node 0, reachable from all. Running
    the command again resumes from OUT/checkpoint.pt. The global batch stays 2048: fewer GPUs use more
    gradient-accumulation micro-steps of 64 images each.
    """
    for name, value in (("nproc_per_node", nproc_per_node), ("nnodes", nnodes)):
        check_positive_int(name, value)
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"node_rank must be in 0..{nnodes - 1}, got {node_rank}")
    command = [*launcher, f"--nproc_per_node={nproc_per_node}"]
    if nnodes == 1:
        command.append("--standalone")
    else:
        command += [f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--master_addr={master_addr}",
                    f"--master_port={master_port}"]
    command += ["-m", "cfgedu", "train", "--preset", preset, "--data", str(data), "--out", str(out)]
    return command + [word for key, value in (overrides or {}).items() for word in (f"--{key}", str(value))]


def read_new_metrics(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """The complete JSON lines of a growing metrics.jsonl after byte `offset`, and the offset to read on from."""
    path = Path(path)
    if not path.is_file():
        return [], offset
    with path.open("rb") as handle:
        handle.seek(offset)
        text = handle.read()
    complete = text[: text.rfind(b"\n") + 1]  # a line still being written waits for the next call
    return [json.loads(line) for line in complete.splitlines() if line.strip()], offset + len(complete)
