"""Image evaluation, once: a protocol says what images are measured with, one sweep measures them for every w.

An extractor maps model-range images (N, C, H, W) in [−1, 1] to (features (N, D), logits (N, K)). A Protocol pairs
one with its reference statistics: the digits CNN at toy scale (digits_classifier.digits_protocol), Inception for
ImageNet 64x64 (inception.imagenet_protocol). guidance_sweep samples n class-balanced labels at each w, streams the
samples through the extractor and scores FID against the reference, IS over the protocol's splits and, when the
logits are the model's classes, the accuracy of the requested labels. Under torch.distributed each rank draws its
share of the labels and the statistics are pooled, so every rank returns the same rows.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..core.samplers import evaluations
from ..core.tensors import derive_seed, make_generator
from .metrics import (
    FeatureStats,
    Moments,
    accuracy_columns,
    fid_floor,
    frechet_distance,
    gather_in_order,
    inception_score,
    rank_and_world,
)
from .sampling import balanced_labels, sample_batches

Extractor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # images in [−1, 1] -> (features, logits)
PaperTable = Mapping[float, Mapping[float, tuple[float, float]]]  # p_uncond -> w -> (FID, IS)


def accept_any_model(model: nn.Module) -> None:
    """The default Protocol.check: every network is accepted."""


@dataclass(frozen=True)
class Protocol:
    """What FID, IS and accuracy are measured with.

    reference(model, run_config) gives the (mean, cov) of real features (run_config: the run's config.json, {} outside
    a run); floor_pool(model), when given, the real images whose n-image subsets give the FID floor; check(model)
    refuses a network the protocol cannot score, with an error that says what to use instead.
    """

    name: str
    extract: Extractor
    reference: Callable[[nn.Module, dict], Moments]
    floor_pool: Callable[[nn.Module], torch.Tensor] | None = None
    is_splits: int = 1
    class_logits: bool = False  # the logits are the model's classes: the accuracy columns are measured
    steps: int = 128  # sampling steps T unless asked otherwise
    per_class: int = 100  # samples per class and per w unless asked otherwise
    paper: PaperTable | None = None  # numbers to print beside ours
    check: Callable[[nn.Module], None] = accept_any_model


# ---- one rank's share -------------------------------------------------------------------------------------------

def shard(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, int]:
    """This rank's labels[rank::W] and its sampling seed: `seed` on rank 0, derive_seed(seed, rank) elsewhere.

    Rank 0 thus draws what a single process draws for the same labels; the pooled numbers of W ranks differ from
    one process's (other noise for the other ranks' samples) but not between ranks.
    """
    rank, world_size = rank_and_world()
    if len(labels) < world_size:
        raise ValueError(f"n = {len(labels)} samples cannot be shared out between {world_size} ranks")
    return labels[rank::world_size], seed if rank == 0 else derive_seed(seed, rank)


def grid_mask(labels: torch.Tensor, classes: int, columns: int) -> torch.Tensor:
    """Which of these labels (sorted, in class blocks) a grid shows: the first `columns` of each of the first
    `classes` classes, fewer columns if one of those classes has fewer samples here."""
    occurrence = torch.arange(len(labels)) - torch.searchsorted(labels, labels)  # index within the class block
    counts = torch.bincount(labels, minlength=classes)[:classes]
    columns = min(columns, int(counts.min())) if classes > 0 else 0
    return (labels < classes) & (occurrence < columns)


def tap(batches: Iterable[torch.Tensor], keep: torch.Tensor, kept: list, bar) -> Iterator[torch.Tensor]:
    """Pass the batches on, appending the images that `keep` (one flag per image, in order) selects to `kept` and
    counting them on a progress bar."""
    start = 0
    for images in batches:
        kept.append(images[keep[start:start + len(images)]])
        start += len(images)
        bar.update(len(images))
        yield images


# ---- scoring ----------------------------------------------------------------------------------------------------

def score_samples(protocol: Protocol, batches: Iterable[torch.Tensor], labels: torch.Tensor,
                  reference: Moments) -> dict:
    """{"n", "fid", "is", "is_std"} and, for class logits, the accuracy columns of a sample set, pooled over ranks.

    `labels` (N,) are all the requested labels; this rank's `batches` are the images it drew for labels[rank::W].
    """
    stats, logits = FeatureStats(), []
    for images in batches:
        features, batch_logits = protocol.extract(images)
        stats.update(features)
        logits.append(batch_logits.detach().float().cpu())
    stats.all_reduce()
    logits = gather_in_order(torch.cat(logits), stats.count)  # (N, K) in the order of `labels`
    is_mean, is_std = inception_score(logits, protocol.is_splits)
    row = {"n": stats.count, "fid": frechet_distance(stats, reference), "is": is_mean, "is_std": is_std}
    return {**row, **accuracy_columns(logits, labels, logits.shape[1])} if protocol.class_logits else row


def floor_columns(protocol: Protocol, model: nn.Module, reference: Moments, n: int, repeats: int, seed: int) -> dict:
    """{"fid_floor", "fid_floor_std"} from the protocol's pool of real images, {} for a protocol without one."""
    if protocol.floor_pool is None:
        return {}
    pool_features = protocol.extract(protocol.floor_pool(model))[0]
    floor, spread = fid_floor(pool_features, reference, n, repeats, torch.Generator().manual_seed(seed))
    return {"fid_floor": floor, "fid_floor_std": spread}


def guidance_sweep(model: nn.Module, ws: list[float], protocol: Protocol, *, n: int | None = None,
                   per_class: int | None = None, steps: int | None = None, seed: int = 0, method: str = "ancestral",
                   v: float = 0.3, batch_size: int = 500, floor_repeats: int = 5, grid: tuple[int, int] = (0, 0),
                   run_config: dict | None = None, precision: str = "fp32",
                   progress: bool = True) -> tuple[dict, dict[float, torch.Tensor]]:
    """Sample n class-balanced labels (default per_class per class, in class blocks) at each w, with the network at
    `precision` (cfgedu.core.tensors.at_precision), and score them.

    Returns ({"protocol", "n", "steps", "method", "nfe", "v", "seed", "precision", ["fid_floor", "fid_floor_std",]
    "rows"},
    grids): one
    row {"w", "n", "fid", "is", "is_std"[, accuracy columns]} per w, and for grid = (classes, columns) the first
    samples of the first classes, {w: (classes, columns, C, H, W)}. Every w draws the same noise, so the rows differ
    only by guidance.
    """
    protocol.check(model)
    n, steps = n or (per_class or protocol.per_class) * model.num_classes, steps or protocol.steps
    reference = protocol.reference(model, run_config or {})
    labels = balanced_labels(n, model.num_classes)
    mine, my_seed = shard(labels, seed)
    keep = grid_mask(mine, min(grid[0], model.num_classes), grid[1])
    grid_shape = (len(mine[keep].unique()), -1) if keep.any() else (0, 0)  # (classes, columns)
    floor = floor_columns(protocol, model, reference, n, floor_repeats, seed)
    draw = partial(sample_batches, model, mine, steps=steps, method=method, v=v, batch_size=batch_size,
                   precision=precision)
    device, rows, grids = next(model.parameters()).device, [], {}
    with progress_bar(len(ws) * len(mine), progress) as bar:
        for w in ws:
            batches, kept = draw(w, generator=make_generator(my_seed, device)), []
            rows.append({"w": float(w), **score_samples(protocol, tap(batches, keep, kept, bar), labels, reference)})
            grids[w] = torch.cat(kept).unflatten(0, grid_shape)
    return ({"protocol": protocol.name, "n": n, "steps": steps, "method": method, "nfe": evaluations(method, steps),
             "v": v, "seed": seed, "precision": precision, **floor, "rows": rows}, grids if keep.any() else {})


def progress_bar(total: int, show: bool):
    """A tqdm bar over the samples of a sweep, shown on rank 0 only."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="guidance sweep", unit="img", disable=not show or rank_and_world()[0] != 0)


# ---- tables -----------------------------------------------------------------------------------------------------

def markdown_table(rows: list[dict], *, floor: float | None = None, paper: tuple[str, Mapping] | None = None,
                   is_std: bool = False) -> str:
    """eval.json rows as a Markdown table: w, s = 1 + w, [accuracy, min class acc.,] FID, [FID / floor,] IS [± std]
    [and the paper's FID and IS, paper = (a note such as "p_uncond 0.1", {w: (FID, IS)})]."""
    columns = [("w", lambda r: f"{r['w']:g}"), ("s = 1 + w", lambda r: f"{1 + r['w']:g}")]
    if rows and "accuracy" in rows[0]:
        columns += [("accuracy", lambda r: f"{r['accuracy']:.3f}"),
                    ("min class acc.", lambda r: f"{r['min_class_accuracy']:.3f}")]
    columns.append(("FID", lambda r: f"{r['fid']:.2f}"))
    if floor is not None:
        columns.append(("FID / floor", lambda r: f"{r['fid'] / floor:.2f}"))
    columns.append(("IS", lambda r: f"{r['is']:.2f}" + (f" ± {r['is_std']:.2f}" if is_std else "")))
    if paper is not None:
        columns += paper_columns(*paper)
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in rows]
    footer = f"\nFID floor (real training subsets of the same size): {floor:.2f}\n" if floor is not None else ""
    return "\n".join(lines) + "\n" + footer


def paper_columns(note: str, table: Mapping[float, tuple[float, float]]) -> list:
    """The paper's FID and IS at each row's w ("–" where the paper has no such w)."""
    def column(index: int) -> Callable[[dict], str]:
        return lambda r: f"{table[round(r['w'], 6)][index]:g}" if round(r["w"], 6) in table else "–"

    return [(f"paper FID ({note})", column(0)), ("paper IS", column(1))]


def paper_for(protocol: Protocol, p_uncond: float | None) -> tuple[str, Mapping] | None:
    """The protocol's paper numbers for a run's p_uncond (the first the paper reports when it has not that one)."""
    if not protocol.paper:
        return None
    p_uncond = p_uncond if p_uncond in protocol.paper else next(iter(protocol.paper))
    return f"p_uncond {p_uncond:g}", protocol.paper[p_uncond]


def result_table(result: dict, protocol: Protocol) -> str:
    """The Markdown table of a guidance_sweep result, with the columns its protocol measures."""
    return markdown_table(result["rows"], floor=result.get("fid_floor"), is_std=protocol.is_splits > 1,
                          paper=paper_for(protocol, result.get("p_uncond")))


# ---- a run folder -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Evaluation:
    result: dict  # eval.json
    table: str  # eval.md
    grids: dict[float, torch.Tensor]  # w -> (classes, columns, C, H, W) samples of rank 0 ({} elsewhere)


def join_processes() -> torch.device:
    """This process's device; under torchrun (WORLD_SIZE > 1) also joins the process group (NCCL or gloo)."""
    from ..engine.processes import join_process_group

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() else \
        torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        join_process_group(device)
    return device


def evaluate_checkpoint(run: Path, protocol: Protocol, ws: list[float], *, progress: bool = True,
                        precision: str | None = None, **options) -> Evaluation:
    """The guidance sweep of a training folder (or its checkpoint.pt) from its EMA weights, at `precision` (default:
    the run's, engine.runs.run_precision); `options` are guidance_sweep's. Under torchrun every process takes its share
    of the samples."""
    from ..engine.runs import load_checkpoint_model, run_precision

    run = Path(run)
    folder = run.parent if run.suffix == ".pt" else run
    model = load_checkpoint_model(run, use_ema=True, kinds=("unet",)).to(join_processes())
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    result, grids = guidance_sweep(model, ws, protocol, run_config=config, progress=progress,
                                   precision=precision or run_precision(run), **options)
    result = {"checkpoint": str(run), **result, "p_uncond": config.get("train", {}).get("p_uncond")}
    return Evaluation(result, result_table(result, protocol), grids if rank_and_world()[0] == 0 else {})


def write_evaluation(evaluation: Evaluation, out: Path) -> str:
    """Write OUT/eval.json and OUT/eval.md on rank 0; return the table."""
    from ..core.io import atomic_write_json, atomic_write_text

    if rank_and_world()[0] == 0:
        atomic_write_json(evaluation.result, Path(out) / "eval.json")
        atomic_write_text(evaluation.table, Path(out) / "eval.md")
    return evaluation.table
