"""Exact resume: a run killed with SIGKILL at a random step and resumed ends with the same weights
as an uninterrupted run; without restoring the RNG it does not (the control)."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunewright
from tests.train.test_loop import config

WORKER = Path(__file__).with_name("train_worker.py")
OVERRIDES = [
    "train.lora_dropout=0.2",
    "train.checkpoint_every_steps=1",
    "train.max_steps=10",
    "train.resume=true",
    "train.keep_checkpoints=2",
    "train.epochs=10",
]


def worker_env() -> dict[str, str]:
    """A worker process's environment: one thread, and the tests and the tunewright that this
    process imports (not whichever one is installed)."""
    paths = [str(Path(__file__).parents[2]), str(Path(tunewright.__file__).parents[1])]
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths)}


def run_worker(recipe: Path, *extra: str, kill_after_step: int | None = None) -> None:
    env = worker_env()
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(recipe), *OVERRIDES, *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if kill_after_step is None:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        return
    marker = (
        recipe.parent / "runs" / "t" / "checkpoints" / f"step-{kill_after_step:08d}" / "COMPLETE"
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, (
            f"worker ended before step {kill_after_step}: {proc.stderr.read()}"
        )
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def final_adapter(root: Path) -> dict[str, torch.Tensor]:
    return load_file(root / "runs" / "t" / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("uninterrupted")
    config(root, tiny_model_dir)  # writes root/r.yaml
    run_worker(root / "r.yaml")
    return final_adapter(root)


def interrupted_then_resumed(
    root: Path, model_dir: Path, *resume_flags: str
) -> dict[str, torch.Tensor]:
    config(root, model_dir)  # writes root/r.yaml
    step = random.Random().randint(2, 8)  # a different step each run: resume must work from any
    run_worker(root / "r.yaml", kill_after_step=step)
    assert not (root / "runs" / "t" / "adapter").exists(), (
        "killed before the end: no final adapter yet"
    )
    run_worker(root / "r.yaml", *resume_flags)
    return final_adapter(root)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_model_dir, uninterrupted):
    resumed = interrupted_then_resumed(tmp_path, tiny_model_dir)
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name


@pytest.mark.slow
def test_control_without_rng_restore_differs(tmp_path, tiny_model_dir, uninterrupted):
    resumed = interrupted_then_resumed(tmp_path, tiny_model_dir, "--no-rng-restore")
    assert any(not torch.equal(resumed[k], uninterrupted[k]) for k in resumed), (
        "dropout draws from the RNG: without restoring it, a resumed run must diverge"
    )
