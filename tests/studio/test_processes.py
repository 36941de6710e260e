"""`tunewright studio --processes 2`: each job trains in two processes under torchrun (gloo on
CPU), then evaluates in one; the job succeeds with a model that answers, and a cancel stops the
launcher and both workers."""

from __future__ import annotations

import time

import psutil
import pytest
from openai import OpenAI

from tests.studio.conftest import FAST, KEY
from tests.studio.test_api import LONG, wait

# One optimiser step of two micro-batches, one per process. (A last step with fewer micro-batches
# than processes deadlocks train/loop.py's fit under DDP: reported, not fixed here.)
ONE_STEP = FAST.replace("train.max_steps=4", "train.max_steps=1")
from tunewright.studio.runner import job_commands
from tunewright.studio.server import start_studio
from tunewright.studio.settings import StudioSettings


@pytest.fixture(scope="module")
def two(tmp_path_factory, tiny_model_dir):
    running = start_studio(
        StudioSettings(
            port=0,
            home=tmp_path_factory.mktemp("studio2"),
            model=str(tiny_model_dir),
            api_key=KEY,
            processes=2,
        )
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client2(two):
    return OpenAI(base_url=two.url + "/v1", api_key=KEY, max_retries=0)


def job_processes(run_dir) -> list[psutil.Process]:
    """The processes running this job's config (launcher and workers)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(str(run_dir) in part for part in p.info["cmdline"] or []):
            found.append(p)
    return found


@pytest.mark.slow
def test_a_two_process_job_succeeds_with_a_model_that_answers(
    two, client2, intents_jsonl, tiny_model_dir
):
    uploaded = client2.files.create(file=("intents.jsonl", intents_jsonl), purpose="fine-tune")
    job = client2.fine_tuning.jobs.create(
        model=tiny_model_dir.name,
        training_file=uploaded.id,
        metadata={"tunewright_overrides": ONE_STEP},
    )
    done = wait(client2, job.id, timeout=240)
    assert done.status == "succeeded", done.error
    run_dir = two.studio.runs_dir / job.id
    train, evaluate = job_commands(run_dir, 2)
    assert "torch.distributed.run" in train and "--nproc_per_node=2" in train
    assert train[-2:] == ["train", str(run_dir / "config.yaml")]
    assert evaluate[-2:] == ["evaluate", str(run_dir / "config.yaml")]
    assert "(lora, " in (log := (run_dir / "job.log").read_text()) and "2 process(es)" in log
    assert (run_dir / "report.html").is_file() and (run_dir / "training.json").is_file()
    answer = client2.chat.completions.create(
        model=done.fine_tuned_model,
        messages=[{"role": "user", "content": "my card was stolen"}],
        max_tokens=3,
    )
    assert answer.choices[0].message.content is not None


@pytest.mark.slow
def test_cancel_stops_the_launcher_and_both_workers(two, client2, intents_jsonl, tiny_model_dir):
    uploaded = client2.files.create(file=("intents.jsonl", intents_jsonl), purpose="fine-tune")
    job = client2.fine_tuning.jobs.create(
        model=tiny_model_dir.name,
        training_file=uploaded.id,
        metadata={"tunewright_overrides": LONG},
    )
    deadline = time.monotonic() + 120
    while not any(e.type == "metrics" for e in client2.fine_tuning.jobs.list_events(job.id)):
        assert time.monotonic() < deadline, "the job never reported a training step"
        time.sleep(0.2)
    run_dir = two.studio.runs_dir / job.id
    running = job_processes(run_dir)
    assert len(running) >= 3, running  # the launcher and two workers
    assert client2.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    _, alive = psutil.wait_procs(running, timeout=30)
    assert not alive, alive
