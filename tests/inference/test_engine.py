"""The engine on its own: stop strings, cancellation, a full queue."""

import queue
import threading

import pytest
import torch

from tunewright.inference.engine import Delta, Engine, EngineBusy, Job, Sampling
from tunewright.models import load_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def run(engine: Engine, prompt: list[int], sampling: Sampling) -> tuple[str, list[Delta]]:
    deltas: queue.Queue[Delta] = queue.Queue()
    engine.submit(Job(prompt, sampling, deltas.put))
    got = [deltas.get(timeout=30)]
    while got[-1].finish_reason is None:
        got.append(deltas.get(timeout=30))
    return "".join(d.text for d in got), got


def test_stop_string_cuts_the_answer_and_is_never_sent(tiny):
    engine = Engine(tiny.model, tiny.tokenizer).start()
    try:
        prompt = tiny.tokenizer("I lost my card")["input_ids"]
        full, _ = run(engine, prompt, Sampling(max_tokens=16))
        stop = full[len(full) // 2 : len(full) // 2 + 2]
        cut, deltas = run(engine, prompt, Sampling(max_tokens=16, stop=(stop,)))
        assert cut == full[: full.index(stop)] and deltas[-1].finish_reason == "stop"
        assert all(stop not in d.text for d in deltas)
    finally:
        engine.close()


def test_a_full_queue_is_refused_not_grown(tiny):
    engine = Engine(
        tiny.model, tiny.tokenizer, max_queue=1
    )  # not started: nothing drains the queue
    engine.submit(Job([1, 2], Sampling(max_tokens=1), print))
    with pytest.raises(EngineBusy):
        engine.submit(Job([1, 2], Sampling(max_tokens=1), print))


def test_a_cancelled_job_gets_nothing_more(tiny):
    engine = Engine(tiny.model, tiny.tokenizer)
    sent = []
    job = Job([1, 2, 3], Sampling(max_tokens=50), sent.append)
    job.cancel()
    engine.submit(job)
    engine.start()
    run(engine, [1, 2], Sampling(max_tokens=2))  # the engine has moved past the cancelled job
    engine.close()
    assert sent == []


def test_a_failing_forward_fails_its_requests_and_the_engine_goes_on(tiny):
    class Flaky(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.calls = model, 0

        def forward(self, **kwargs):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("boom")
            return self.model(**kwargs)

    engine = Engine(Flaky(tiny.model), tiny.tokenizer).start()
    try:
        _, deltas = run(engine, [1, 2, 3], Sampling(max_tokens=3))
        assert deltas[-1].finish_reason == "error" and "boom" in deltas[-1].error
        _, deltas = run(engine, [1, 2, 3], Sampling(max_tokens=3))
        assert deltas[-1].finish_reason in ("stop", "length")
    finally:
        engine.close()


def test_call_runs_between_steps_on_the_worker_and_hands_back_result_or_error(tiny):
    engine = Engine(tiny.model, tiny.tokenizer).start()
    try:
        prompt = tiny.tokenizer("I lost my card")["input_ids"]
        before, _ = run(engine, prompt, Sampling(max_tokens=8))
        assert engine.call(lambda: threading.current_thread().name) == "tunewright-engine"
        with pytest.raises(ZeroDivisionError):
            engine.call(lambda: 1 / 0)
        after, _ = run(engine, prompt, Sampling(max_tokens=8))  # still serving, unchanged
        assert after == before
    finally:
        engine.close()
