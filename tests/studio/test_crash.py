"""Crash safety: kill -9 the studio while a job trains; started again, it resumes the job from its
last checkpoint and ends with the same adapter as a job that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openai import OpenAI

from tests.studio.conftest import FAST

# 60 steps (many epochs of the small file), a checkpoint every 10: the kill lands mid-training
OVERRIDES = FAST.replace("train.max_steps=4", "train.max_steps=60") + (
    " train.epochs=100 train.log_every_steps=10 train.checkpoint_every_steps=10"
)


def start(home: Path, model: Path) -> tuple[subprocess.Popen, OpenAI]:
    """`tunewright studio` as a user starts it; returns once it prints its address."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunewright.cli",
            "studio",
            "--home",
            str(home),
            "--port",
            "0",
            "--model",
            str(model),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"},
    )
    for line in process.stdout:
        if line.startswith("studio at "):
            url = line.split()[2]
            return process, OpenAI(base_url=url, api_key="none", max_retries=0)
    raise AssertionError(f"the studio did not start (exit {process.wait()})")


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:  # it exited meanwhile
            pass
    return found


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)


def wait(client: OpenAI, job_id: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish")


def create(client: OpenAI, data: bytes, model: Path):
    uploaded = client.files.create(file=("intents.jsonl", data), purpose="fine-tune")
    return client.fine_tuning.jobs.create(
        model=model.name,
        training_file=uploaded.id,
        seed=3,
        metadata={"tunewright_overrides": OVERRIDES},
    )


@pytest.mark.slow
def test_a_job_killed_with_the_studio_resumes_to_the_same_adapter(
    tmp_path, tiny_model_dir, intents_jsonl
):
    process, client = start(tmp_path / "crashed", tiny_model_dir)
    try:
        job = create(client, intents_jsonl, tiny_model_dir)
        deadline = time.monotonic() + 120
        while not client.fine_tuning.jobs.checkpoints.list(job.id).data:  # wait for a checkpoint
            assert time.monotonic() < deadline, client.fine_tuning.jobs.retrieve(job.id)
            time.sleep(0.2)
    finally:
        process.kill()  # kill -9: no cleanup of any kind
        process.wait()
    run = tmp_path / "crashed" / "runs" / job.id
    assert not (run / "adapter").exists(), "the job finished before the kill; make it longer"
    time.sleep(0.5)
    assert not _processes_mentioning(str(run)), "the job's process outlived the studio"

    process, client = start(tmp_path / "crashed", tiny_model_dir)
    try:
        done = wait(client, job.id)
        events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    finally:
        stop(process)
    assert done.status == "succeeded", done.error
    assert any("The studio restarted" in m for m in events)
    assert "resumed from step-" in (run / "job.log").read_text()

    process, client = start(tmp_path / "whole", tiny_model_dir)
    try:
        whole = create(client, intents_jsonl, tiny_model_dir)
        assert wait(client, whole.id).status == "succeeded"
    finally:
        stop(process)
    adapter = "adapter/adapter_model.safetensors"
    uninterrupted = (tmp_path / "whole" / "runs" / whole.id / adapter).read_bytes()
    assert (run / adapter).read_bytes() == uninterrupted
