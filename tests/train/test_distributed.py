"""Data parallelism: two processes (torchrun, gloo on CPU), replicated (DDP) or sharded (FSDP2),
give the same weights as one process with the same global batch (gradient accumulation 2); and a
sharded run killed mid-way and resumed from its checkpoint ends where an uninterrupted one does."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # accelerate's dependency
import pytest
import torch
from safetensors.torch import load_file

from tests.train.test_loop import config
from tests.train.test_resume import worker_env
from tunewright.train.checkpoint import latest_checkpoint

WORKER = Path(__file__).with_name("train_worker.py")
COMMON = ["train.max_steps=4", "train.batch_size=4", "train.lr_warmup_steps=0"]


def trained_weights(root: Path, method: str) -> dict[str, torch.Tensor]:
    if method == "lora":
        return load_file(root / "runs" / "t" / "adapter" / "adapter_model.safetensors")
    return load_file(root / "runs" / "t" / "model" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "sharding"), [("lora", "ddp"), ("lora", "fsdp"), ("full", "fsdp")]
)
def test_two_processes_match_one_with_the_same_global_batch(
    tmp_path, tiny_model_dir, method, sharding
):
    env = worker_env()
    single, double = tmp_path / "one", tmp_path / "two"
    config(single, tiny_model_dir)
    config(double, tiny_model_dir)
    common = [*COMMON, f"train.method={method}", f"train.fsdp={sharding == 'fsdp'}"]
    if (
        sharding == "fsdp"
    ):  # FSDP runs every row in full; so must the one process it is compared with
        common.append("train.shared_prefix=false")
    if method == "full":
        common.append("train.lr=0.003")
    one = subprocess.run(
        [sys.executable, str(WORKER), str(single / "r.yaml"), *common, "train.grad_accum_steps=2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(WORKER),
            str(double / "r.yaml"),
            *common,
            "train.grad_accum_steps=1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = trained_weights(single, method), trained_weights(double, method)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    if method == "lora":
        assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)
    else:  # every weight moved (a gathered-but-stale shard would show up as an unchanged tensor)
        initial = load_file(tiny_model_dir / "model.safetensors")
        assert all(not torch.equal(initial[k], b[k]) for k in initial if k in b)


@pytest.mark.slow
def test_a_short_last_step_leaves_no_rank_waiting(tmp_path, tiny_model_dir):
    """Five micro-batches on two processes: the last step has one, so one rank has none of its
    own; the run must still finish, with the weights of one process taking the same steps."""
    from rich.console import Console

    from tunewright.data.prepare import prepare

    env = worker_env()
    single, double = tmp_path / "one", tmp_path / "two"
    cfg = config(single, tiny_model_dir)
    config(double, tiny_model_dir)
    batches_per_epoch = -(-len(prepare(cfg, console=Console(quiet=True)).train) // 4)
    common = [
        "train.batch_size=4",
        "train.lr_warmup_steps=0",
        f"train.epochs={5 / batches_per_epoch!r}",  # five micro-batches: steps of 2, 2 and 1
    ]
    runs = {
        single: [
            sys.executable,
            str(WORKER),
            str(single / "r.yaml"),
            *common,
            "train.grad_accum_steps=2",
        ],
        double: [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(WORKER),
            str(double / "r.yaml"),
            *common,
        ],
    }
    for command in runs.values():
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads((r / "runs" / "t" / "training.json").read_text()) for r in runs]
    assert [s["steps"] for s in summaries] == [3, 3]
    a, b = trained_weights(single, "lora"), trained_weights(double, "lora")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


STEPS = 8
RESUMABLE = [
    "train.fsdp=true",
    "train.batch_size=4",
    f"train.max_steps={STEPS}",
    "train.epochs=10",
    "train.checkpoint_every_steps=1",
    "train.keep_checkpoints=2",
    "train.resume=true",
]


def torchrun(recipe: Path, *overrides: str, kill_after_step: int | None = None) -> None:
    """Two FSDP processes under torchrun; with `kill_after_step`, SIGKILL the launcher and both
    workers once that step's checkpoint is complete."""
    env = worker_env()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(WORKER),
        str(recipe),
        *RESUMABLE,
        *overrides,
    ]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if kill_after_step is None:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        return
    marker = (
        recipe.parent / "runs" / "t" / "checkpoints" / f"step-{kill_after_step:08d}" / "COMPLETE"
    )
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.poll() is None, (
            f"ended before step {kill_after_step}: {proc.stderr.read()[-3000:]}"
        )
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # torchrun starts each worker in a session of its own: killing the launcher (or its process
    # group) would leave them training on. The launcher goes first, so it cannot react.
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2, workers
    proc.send_signal(signal.SIGKILL)
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, alive


def logged_steps(root: Path) -> list[int]:
    rows = (
        json.loads(line)
        for line in (root / "runs" / "t" / "metrics.jsonl").read_text().splitlines()
    )
    return [row["step"] for row in rows if "train_loss" in row]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_fsdp_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_model_dir, method):
    # dropout draws from each rank's RNG, over micro-batches of different shapes: the resumed
    # ranks must each get their own generator state back
    extra = (
        ["train.method=lora", "train.lora_dropout=0.2"]
        if method == "lora"
        else ["train.method=full", "train.lr=0.003"]
    )
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    config(whole, tiny_model_dir)
    config(broken, tiny_model_dir)
    torchrun(whole / "r.yaml", *extra)
    step = random.Random().randint(2, 4)  # a different step each run: resume must work from any
    torchrun(broken / "r.yaml", *extra, kill_after_step=step)
    output = broken / "runs" / "t" / ("adapter" if method == "lora" else "model")
    assert not output.exists(), "killed before the end: nothing saved yet"
    resume_from = latest_checkpoint(broken / "runs" / "t" / "checkpoints")
    assert resume_from is not None and resume_from.name < f"step-{STEPS:08d}", (
        "steps are left to train"
    )
    torchrun(broken / "r.yaml", *extra)
    assert logged_steps(broken).count(1) == 1, "the second run resumed rather than starting over"

    a, b = trained_weights(whole, method), trained_weights(broken, method)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
