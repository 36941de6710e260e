"""The generation engine: one worker thread owns the model and serves every request.

Why one thread: on a CPU, torch already spreads one matrix product over every core, so a second
thread running the model would only contend with the first. Instead, concurrent requests share
each forward pass through continuous batching: at every decoding step, finished rows leave the
batch and waiting requests join it (their prompts are prefilled with left padding, then their KV
cache rows are left-padded to the batch's length and concatenated), so a short answer never waits
for a long one, and 16 clients cost one batched forward pass per token instead of 16.

Several LoRA adapters on one base model run in the same batch: peft's `adapter_names` picks the
adapter of each row (`__base__` for the base model).

Requests are `Job`s: a prompt (token ids), sampling settings and a callback that receives
`Delta`s (new text, then a finish reason). The callback runs on the worker thread and must not
block; the HTTP server hands deltas to its event loop, the terminal chat to a queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from tunewright.inference.padding import left_pad
from tunewright.inference.tokens import pad_token_id, stop_token_ids

log = logging.getLogger(__name__)
BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Delta:
    text: str
    finish_reason: str | None = None  # None while generating; then "stop", "length" or "error"
    completion_tokens: int = 0
    error: str | None = None


class EngineBusy(Exception):
    """The request queue is full (or the engine is shutting down)."""


@dataclass(eq=False)
class Job:
    prompt_ids: list[int]
    sampling: Sampling
    on_delta: Callable[[Delta], None]
    adapter: str | None = None  # None: the base model
    deadline: float | None = None  # time.monotonic() after which the job fails with a timeout
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False  # a delta with a finish reason was sent; nothing follows it

    def send(self, delta: Delta) -> None:
        """Hand a delta to the callback (worker thread only); never anything after the last one."""
        if self.finished:
            return
        self.finished = delta.finish_reason is not None
        self.on_delta(delta)

    def cancel(self) -> None:
        """Stop generating for this job (e.g. the client went away); no further deltas are sent."""
        self.cancelled.set()


class _Row:
    """One job in the running batch: its generated tokens and what has been sent of their text."""

    def __init__(self, job: Job, engine: Engine):
        self.job = job
        self.engine = engine
        self.tokens: list[int] = []
        self.sent = 0  # characters of the decoded answer already sent
        self.position = len(job.prompt_ids)  # position id of the next token fed to the model
        self.generator = None
        if job.sampling.seed is not None:
            self.generator = torch.Generator().manual_seed(job.sampling.seed)

    def advance(self, token: int) -> bool:
        """Take the next sampled token, send what can be sent; True when the row is finished."""
        s = self.job.sampling
        if token in self.engine.stops:
            return self._finish(self._text(), "stop")
        self.tokens.append(token)
        text = self._text()
        for stop in s.stop:
            at = text.find(stop)
            if at >= 0:
                return self._finish(text[:at], "stop")
        if len(self.tokens) >= s.max_tokens:
            return self._finish(text, "length")
        safe = len(text.rstrip("\ufffd"))  # an incomplete UTF-8 character decodes as U+FFFD
        for stop in s.stop:  # hold back a tail that may become a stop string
            for k in range(min(len(stop) - 1, safe), 0, -1):
                if text[:safe].endswith(stop[:k]):
                    safe -= k
                    break
        if safe > self.sent:
            self.job.send(Delta(text[self.sent : safe], completion_tokens=len(self.tokens)))
            self.sent = safe
        return False

    def _finish(self, text: str, reason: str) -> bool:
        self.job.send(Delta(text[self.sent :], reason, completion_tokens=len(self.tokens)))
        return True

    def _text(self) -> str:
        return self.engine.tokenizer.decode(self.tokens, skip_special_tokens=True)


class Engine:
    """Owns the model on one worker thread; `submit` jobs from any thread."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch_size: int = 16,
        max_queue: int = 256,
        adapters: bool = False,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.stops = set(stop_token_ids(tokenizer))
        self.pad_id = pad_token_id(tokenizer)
        self.max_batch_size = max_batch_size
        self.adapters = adapters  # True when `model` is a PeftModel serving adapters by name
        self._queue: queue.Queue[Job] = queue.Queue(max_queue)
        self._calls: queue.Queue[tuple[Callable[[], object], Future]] = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tunewright-engine", daemon=True)
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # (rows, cached positions), 0 = padding
        self._logits: torch.Tensor | None = None  # (rows, vocab): each row's next-token logits

    # --- the public side ----------------------------------------------------------------
    def start(self) -> Engine:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        if self._closed.is_set():
            raise EngineBusy("the server is shutting down")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise EngineBusy(
                f"{self._queue.maxsize} requests are already waiting; retry shortly"
            ) from None

    def call(self, fn: Callable[[], object], timeout: float | None = 300) -> object:
        """Run `fn` on the worker thread between two decoding steps and return its result.

        For changes to the model while it serves (the studio loads a newly trained adapter): no
        forward pass runs while `fn` does, so it may add adapters or replace `self.model`.
        """
        done: Future = Future()
        self._calls.put((fn, done))
        return done.result(timeout=timeout)

    @property
    def load(self) -> dict[str, int]:
        return {"running": len(self._rows), "waiting": self._queue.qsize()}

    # --- the worker thread ---------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while not self._closed.is_set():
                self._run_calls()
                jobs = self._take(block=not self._rows)
                try:
                    self._step(jobs)
                except Exception as e:  # fail this batch's requests, keep serving the next ones
                    log.exception("generation failed")
                    for row in self._rows:
                        row.job.send(
                            Delta("", "error", error=f"generation failed: {type(e).__name__}: {e}")
                        )
                    for job in jobs:  # admitted or not: `send` ignores the ones already finished
                        job.send(
                            Delta("", "error", error=f"generation failed: {type(e).__name__}: {e}")
                        )
                    self._reset()
            for row in self._rows:
                row.job.send(Delta("", "error", error="the server is shutting down"))
            while not self._queue.empty():
                self._queue.get_nowait().send(
                    Delta("", "error", error="the server is shutting down")
                )

    def _run_calls(self) -> None:
        while not self._calls.empty():
            fn, done = self._calls.get_nowait()
            try:
                done.set_result(fn())
            except Exception as e:  # the caller gets it; serving goes on
                done.set_exception(e)

    def _take(self, block: bool) -> list[Job]:
        """Waiting jobs that fit in the batch; waits for one when the batch is empty."""
        jobs: list[Job] = []
        while len(self._rows) + len(jobs) < self.max_batch_size:
            try:
                job = (
                    self._queue.get(timeout=0.1) if block and not jobs else self._queue.get_nowait()
                )
            except queue.Empty:
                if block and not jobs and not self._closed.is_set() and self._calls.empty():
                    continue
                break
            if job.cancelled.is_set():
                continue
            if job.deadline is not None and time.monotonic() > job.deadline:
                job.send(Delta("", "error", error="timed out waiting in the queue"))
                continue
            jobs.append(job)
        return jobs

    def _step(self, jobs: list[Job]) -> None:
        """Admit new jobs, pick every row's next token, drop finished rows, run one decode pass."""
        if jobs:
            self._admit(jobs)
        if not self._rows:
            return
        next_tokens = self._sample()
        keep = []
        now = time.monotonic()
        for i, row in enumerate(self._rows):
            if row.job.cancelled.is_set():
                continue
            if row.job.deadline is not None and now > row.job.deadline:
                row.job.send(
                    Delta("", "error", completion_tokens=len(row.tokens), error="timed out")
                )
                continue
            if not row.advance(int(next_tokens[i])):
                keep.append(i)
        if len(keep) < len(self._rows):
            self._select(keep)
            if not self._rows:
                return
            next_tokens = next_tokens[keep]
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=1)
        positions = torch.tensor([[row.position] for row in self._rows])
        self._logits = self._forward(
            self._rows, next_tokens[:, None], self._mask, positions, self._cache
        )
        for row in self._rows:
            row.position += 1

    def _admit(self, jobs: list[Job]) -> None:
        """Prefill the new prompts and join their rows to the running batch."""
        batch = left_pad([job.prompt_ids for job in jobs], self.pad_id)
        mask, width = batch.attention_mask, batch.input_ids.shape[1]
        new_rows = [_Row(job, self) for job in jobs]
        cache = DynamicCache()
        logits = self._forward(new_rows, batch.input_ids, mask, batch.position_ids, cache)
        if not self._rows:
            self._rows, self._cache, self._mask, self._logits = new_rows, cache, mask, logits
            return
        length = max(self._mask.shape[1], width)
        self._cache = _concat_caches(
            [(self._cache, length - self._mask.shape[1]), (cache, length - width)]
        )
        self._mask = torch.cat([_pad_left(self._mask, length), _pad_left(mask, length)])
        self._logits = torch.cat([self._logits, logits])
        self._rows = self._rows + new_rows

    def _forward(self, rows, input_ids, mask, positions, cache) -> torch.Tensor:
        """One forward pass; returns each row's logits for its next token. `cache` grows in place."""
        kwargs = {}
        if self.adapters:
            kwargs["adapter_names"] = [row.job.adapter or BASE_ADAPTER for row in rows]
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        return out.logits[:, -1].float()

    def _sample(self) -> torch.Tensor:
        """Each row's next token: argmax for greedy rows, top-p sampling for the others."""
        tokens = self._logits.argmax(dim=-1)
        for i, row in enumerate(self._rows):
            s = row.job.sampling
            if s.temperature <= 0:
                continue
            probs = torch.softmax(self._logits[i] / s.temperature, dim=-1)
            if s.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                outside = (
                    sorted_probs.cumsum(-1) - sorted_probs > s.top_p
                )  # keep the smallest set reaching top_p
                sorted_probs[outside] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            tokens[i] = torch.multinomial(probs, 1, generator=row.generator)[0]
        return tokens

    def _select(self, keep: list[int]) -> None:
        """Keep only these rows, and drop the leading cache positions that are padding for all."""
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._reset()
            return
        index = torch.tensor(keep)
        mask = self._mask[index]
        first_real = int(mask.any(dim=0).long().argmax())
        self._mask = mask[:, first_real:]
        self._logits = self._logits[index]
        self._cache = DynamicCache(
            ddp_cache_data=[
                (layer.keys[index, :, first_real:], layer.values[index, :, first_real:])
                for layer in self._cache.layers
            ]
        )

    def _reset(self) -> None:
        self._rows, self._cache, self._mask, self._logits = [], None, None, None


def _pad_left(mask: torch.Tensor, length: int) -> torch.Tensor:
    return torch.cat([mask.new_zeros((mask.shape[0], length - mask.shape[1])), mask], dim=1)


def _pad_positions(states: torch.Tensor, pad: int) -> torch.Tensor:
    """Left-pad (batch, heads, positions, dim) cache states with `pad` zero positions."""
    b, h, _, d = states.shape
    return torch.cat([states.new_zeros((b, h, pad, d)), states], dim=2)


def _concat_caches(parts: list[tuple[DynamicCache, int]]) -> DynamicCache:
    """Stack caches along the batch, left-padding each by the given number of positions.

    Padded positions hold zeros and are masked out by the attention mask, so their values never
    matter.
    """
    layers = []
    for layer_parts in zip(*(cache.layers for cache, _ in parts)):
        keys, values = [], []
        for layer, (_, pad) in zip(layer_parts, parts):
            keys.append(_pad_positions(layer.keys, pad))
            values.append(_pad_positions(layer.values, pad))
        layers.append((torch.cat(keys), torch.cat(values)))
    return DynamicCache(ddp_cache_data=layers)
