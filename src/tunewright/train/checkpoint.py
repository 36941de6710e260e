"""Checkpoints for exact resume: atomic on disk, and free of pickle.

A checkpoint is a folder `step-{step:08d}` holding

    model.safetensors       the state the caller passed (for LoRA: only the trainable tensors)
    optimizer.safetensors   optimizer state tensors, named `state.{param_index}.{key}`
    optimizer.json          param_groups' hyperparameters, and any non-tensor state
    trainer_state.json      step, the scheduler's serialisable state, data_state, metrics
    rng.safetensors         torch CPU (and CUDA) generator states, as uint8 tensors
    rng.json                Python's `random` and numpy's global generator states
    COMPLETE                written last; a folder without it is ignored

Under several processes each rank's generators are kept: rank 0's under the names above, rank r's
under `rank{r}.` (tensors) and `rank{r}` (JSON). Under FSDP the caller gathers whole tensors first
(`fsdp_state.gather_full_state`), so the files are the same with or without sharding.

Writes go to `.tmp-step-{step}-{uuid}`, every file and the folder are fsynced, the folder is
renamed into place and only then is COMPLETE written (and fsynced), so a crash at any point
leaves the previous checkpoints loadable. Nothing is pickled: a checkpoint from an untrusted
source can be loaded without running its code, and the files read with any safetensors reader.

Only the main process should call `save_checkpoint`; `latest_checkpoint` deletes `.tmp-*`
leftovers, so it must not run while a save is in flight (all ranks may run it at once at startup).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.optim.lr_scheduler import LRScheduler

from tunewright.files import TMP_PREFIX, fsync_path, write_json_atomic
from tunewright.train.fsdp_state import load_full_state

__all__ = [
    "RngState",
    "TrainerState",
    "capture_rng_state",
    "gather_rng_states",
    "latest_checkpoint",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

COMPLETE = "COMPLETE"
BEST_FILE = "best.json"
_STEP_DIR = re.compile(r"step-(\d+)")


class RngState(TypedDict):
    """Every random generator a training run draws from, as `capture_rng_state` returns it."""

    torch_cpu: torch.Tensor  # uint8
    torch_cuda: list[torch.Tensor]  # uint8, one per device; empty when CUDA was never used
    numpy: dict[str, Any]  # numpy's global (legacy) MT19937 generator, JSON-safe
    python: list[Any]  # random.getstate(), JSON-safe


@dataclass(frozen=True, slots=True)
class TrainerState:
    """What `load_checkpoint` hands back besides the objects it restored in place."""

    path: Path
    step: int
    data_state: dict[str, Any]
    metrics: dict[str, Any]
    rng: RngState


# --- random generators ----------------------------------------------------------------------


def capture_rng_state() -> RngState:
    """Snapshot torch (CPU and, if initialised, CUDA), numpy and Python random states."""
    # Only when CUDA is already initialised: asking an idle process would create a context on
    # every GPU, which costs memory on each of them in every data-parallel worker.
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": list(cuda),
        "numpy": {
            "bit_generator": name,
            "keys": keys.tolist(),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached_gaussian": cached_gaussian,
        },
        "python": [version, list(internal), gauss_next],
    }


def gather_rng_states() -> list[RngState]:
    """Every process's `capture_rng_state()`, indexed by rank. Collective under torch.distributed.

    Ranks need not draw alike (dropout over micro-batches of different shapes, a step whose
    micro-batches split unevenly), so for an exact resume each rank continues from its own state.
    """
    mine = capture_rng_state()
    if not dist.is_initialized():
        return [mine]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(
        states, mine
    )  # pickled over the wire only; the checkpoint stays pickle-free
    return states


def restore_rng_state(state: RngState) -> None:
    """Put every generator back where `capture_rng_state` found it."""
    torch.set_rng_state(state["torch_cpu"])
    if state["torch_cuda"]:
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["bit_generator"],
            np.asarray(numpy_state["keys"], dtype=np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


# --- durable writes -------------------------------------------------------------------------


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    # safetensors refuses tensors that share memory (tied embeddings, views); one copy of
    # each repeat is cheaper than making every caller dedupe.
    seen: set[int] = set()
    plain = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach()
        storage = tensor.untyped_storage().data_ptr()
        plain[name] = tensor.clone() if storage in seen else tensor.contiguous()
        seen.add(storage)
    save_file(plain, str(path))
    fsync_path(path)


# --- optimizer and scheduler as tensors + JSON ----------------------------------------------


def _split_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's `state_dict()` as flat named tensors, and everything else as JSON."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = []
    for g, group in enumerate(state_dict["param_groups"]):
        plain = {}
        for key, value in group.items():
            if isinstance(value, torch.Tensor):  # e.g. a tensor lr for capturable optimizers
                tensors[f"param_groups.{g}.{key}"] = value
            else:
                plain[key] = value
        groups.append(plain)
    return tensors, {"param_groups": groups, "state_scalars": scalars}


def _join_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    groups = meta["param_groups"]
    for name, tensor in tensors.items():
        kind, index, key = name.split(".", 2)
        if kind == "state":
            state.setdefault(int(index), {})[key] = tensor
        else:
            groups[int(index)][key] = tensor
    for index, values in meta["state_scalars"].items():
        state.setdefault(int(index), {}).update(values)
    # JSON turned tuples (AdamW's betas) into lists; give each value its live type back.
    for saved, live in zip(groups, optimizer.param_groups, strict=True):
        for key, value in saved.items():
            if isinstance(live.get(key), tuple):
                saved[key] = tuple(value)
    return {"state": state, "param_groups": groups}


def _scheduler_state(scheduler: LRScheduler | None) -> dict[str, Any]:
    """The JSON-serialisable entries of `scheduler.state_dict()`.

    LambdaLR (and transformers' warmup schedules, built on it) keeps its lambdas in the state
    dict. They are code, rebuilt by the caller from the config, so we skip anything that does not
    survive JSON; the counters and learning rates that do survive are the resumable part.
    """
    if scheduler is None:
        return {}
    kept = {}
    for key, value in scheduler.state_dict().items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        kept[key] = value
    return kept


# --- checkpoints on disk --------------------------------------------------------------------


def _step_of(path: Path) -> int | None:
    match = _STEP_DIR.fullmatch(path.name)
    return int(match.group(1)) if match else None


def _complete_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first."""
    found = [p for p in directory.iterdir() if _step_of(p) is not None and (p / COMPLETE).exists()]
    return sorted(found, key=lambda p: _step_of(p) or 0)


def _remove(path: Path) -> None:
    # Rename first, so that a crash mid-delete never leaves a half-deleted folder that still
    # looks complete; latest_checkpoint sweeps the renamed leftover.
    doomed = path.with_name(f"{TMP_PREFIX}delete-{path.name}-{uuid.uuid4().hex}")
    os.rename(path, doomed)
    shutil.rmtree(doomed)


def _best_checkpoint(checkpoints: list[Path], key: str) -> tuple[Path, float] | None:
    """The checkpoint with the lowest `metrics[key]`; the earliest wins a tie.

    Found by reading every kept checkpoint: the best is never pruned, so the minimum over the
    kept ones is the minimum over all ever saved, and no separate record can go stale.
    """
    best: tuple[Path, float] | None = None
    for path in checkpoints:
        value = _read_json(path / "trainer_state.json")["metrics"].get(key)
        if value is None or math.isnan(value):  # no eval at this step, or a diverged one
            continue
        if best is None or value < best[1]:
            best = (path, float(value))
    return best


def save_checkpoint(
    directory: Path,
    *,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | dict[str, Any],
    scheduler: LRScheduler | None,
    rng: RngState | list[RngState],
    data_state: dict[str, Any],
    metrics: dict[str, Any],
    keep_last: int,
    best_metric_key: str | None,
) -> Path:
    """Write checkpoint `directory/step-{step:08d}` atomically, then prune old ones.

    Keeps the `keep_last` newest complete checkpoints plus the one with the lowest
    `metrics[best_metric_key]` (checkpoints whose metrics lack the key are not candidates), and
    records the best one's name in `directory/best.json`. Call it only at optimizer-step
    boundaries, or a resume double-counts gradient accumulation. `data_state` and `metrics`
    must be JSON-serialisable. Saving a step that already has a complete checkpoint raises
    FileExistsError. `optimizer` is the optimizer or its (whole, unsharded) `state_dict()`; `rng`
    is this process's state or, from `gather_rng_states`, every rank's.
    """
    if keep_last < 1:
        raise ValueError(f"train.keep_last must be at least 1, got {keep_last}")
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}"
    # Replacing a good checkpoint cannot be atomic (a folder cannot be renamed over another),
    # so there would be a moment with neither; a step is saved once instead.
    if (final / COMPLETE).exists():
        raise FileExistsError(f"checkpoint {final} already exists; save each step only once")
    tmp = directory / f"{TMP_PREFIX}step-{step}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _write_files(tmp, step, model_state, optimizer, scheduler, rng, data_state, metrics)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # e.g. metrics that are not JSON: leave no junk
        raise

    if final.exists():  # the remains of a save that died between its rename and COMPLETE
        _remove(final)
    os.rename(tmp, final)
    fsync_path(directory)
    (final / COMPLETE).write_text(f"{step}\n", encoding="utf-8")
    fsync_path(final / COMPLETE)
    fsync_path(final)

    _prune(directory, keep_last, best_metric_key)
    return final


def _write_files(
    folder: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | dict[str, Any],
    scheduler: LRScheduler | None,
    rng: RngState | list[RngState],
    data_state: dict[str, Any],
    metrics: dict[str, Any],
) -> None:
    # The JSON goes first: a value JSON cannot hold fails the save before gigabytes are written.
    trainer_state = {
        "step": step,
        "scheduler": _scheduler_state(scheduler),
        "data_state": data_state,
        "metrics": metrics,
    }
    _write_json(folder / "trainer_state.json", trainer_state)
    states = rng if isinstance(rng, list) else [rng]
    # rank 0 unprefixed: the layout of a single-process checkpoint
    rng_meta: dict[str, Any] = {"numpy": states[0]["numpy"], "python": states[0]["python"]}
    rng_meta |= {
        f"rank{r}": {"numpy": s["numpy"], "python": s["python"]} for r, s in enumerate(states) if r
    }
    rng_tensors: dict[str, torch.Tensor] = {}
    for rank, state in enumerate(states):
        prefix = f"rank{rank}." if rank else ""
        rng_tensors[f"{prefix}torch_cpu"] = state["torch_cpu"]
        rng_tensors |= {
            f"{prefix}torch_cuda.{i}": cuda for i, cuda in enumerate(state["torch_cuda"])
        }
    _write_json(folder / "rng.json", rng_meta)
    _save_tensors(folder / "rng.safetensors", rng_tensors)
    optimizer_state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    optimizer_tensors, optimizer_meta = _split_optimizer(optimizer_state)
    _write_json(folder / "optimizer.json", optimizer_meta)
    _save_tensors(folder / "optimizer.safetensors", optimizer_tensors)
    _save_tensors(folder / "model.safetensors", model_state)
    fsync_path(folder)


def _prune(directory: Path, keep_last: int, best_metric_key: str | None) -> None:
    checkpoints = _complete_checkpoints(directory)
    keep = set(checkpoints[-keep_last:])
    if best_metric_key is not None and (best := _best_checkpoint(checkpoints, best_metric_key)):
        keep.add(best[0])
        record = {"checkpoint": best[0].name, "metric": best_metric_key, "value": best[1]}
        write_json_atomic(directory / BEST_FILE, record, sort_keys=True)
    for path in checkpoints:
        if path not in keep:
            _remove(path)
    # A step folder without COMPLETE is a save that died after its rename: never loadable.
    for path in directory.iterdir():
        if _step_of(path) is not None and not (path / COMPLETE).exists():
            _remove(path)


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint in `directory`, or None; deletes `.tmp-*` leftovers."""
    if not directory.is_dir():
        return None
    for path in directory.iterdir():
        if path.name.startswith(TMP_PREFIX):
            try:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            except FileNotFoundError:  # every rank sweeps at startup; another got there first
                pass
    checkpoints = _complete_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None,
    *,
    restore_rng: bool = True,
    rank: int = 0,
    sharded: bool = False,
) -> TrainerState:
    """Restore model, optimizer and scheduler in place from checkpoint `path`.

    Every tensor in `model.safetensors` must name a key of `model.state_dict()` (a checkpoint
    may hold only a subset, e.g. LoRA's trainable tensors; a name the model lacks is an error).
    The optimizer and scheduler must be built the same way as for the saved run. With
    `restore_rng` (the default) the random generators are restored as well, to those `rank`
    saved (rank 0's when the checkpoint has none for `rank`, e.g. one from a single process).
    `sharded`: the model is sharded with FSDP2; then this is collective, and every rank calls it.
    """
    if not (path / COMPLETE).exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE} marker)")

    state = load_file(str(path / "model.safetensors"))
    unknown = sorted(set(state) - set(model.state_dict()))
    if unknown:
        raise KeyError(f"{path / 'model.safetensors'} has tensors the model lacks: {unknown[:5]}")
    optimizer_state = _join_optimizer(
        optimizer,
        load_file(str(path / "optimizer.safetensors")),
        _read_json(path / "optimizer.json"),
    )
    if sharded:
        load_full_state(model, optimizer, state, optimizer_state)
    else:
        model.load_state_dict(state, strict=False)
        optimizer.load_state_dict(optimizer_state)

    trainer_state = _read_json(path / "trainer_state.json")
    if scheduler is not None:
        # Start from the live state dict so the entries we did not save (the lambdas) stay.
        merged = scheduler.state_dict() | trainer_state["scheduler"]
        scheduler.load_state_dict(merged)

    rng_tensors = load_file(str(path / "rng.safetensors"))
    rng_meta = _read_json(path / "rng.json")
    if rank and f"rank{rank}" in rng_meta:
        prefix, rng_meta = f"rank{rank}.", rng_meta[f"rank{rank}"]
    else:
        prefix = ""
    cuda_count = sum(1 for name in rng_tensors if name.startswith(f"{prefix}torch_cuda."))
    rng: RngState = {
        "torch_cpu": rng_tensors[f"{prefix}torch_cpu"],
        "torch_cuda": [rng_tensors[f"{prefix}torch_cuda.{i}"] for i in range(cuda_count)],
        "numpy": rng_meta["numpy"],
        "python": rng_meta["python"],
    }
    if restore_rng:
        restore_rng_state(rng)

    return TrainerState(
        path=path,
        step=trainer_state["step"],
        data_state=trainer_state["data_state"],
        metrics=trainer_state["metrics"],
        rng=rng,
    )
