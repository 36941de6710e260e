"""An LLM judge: any OpenAI-compatible endpoint grades each answer against its reference.

Off by default (`evaluate.judge.enabled`). Calls are made at temperature 0 and every verdict is
cached in `<run>/eval/judge_cache.jsonl`, keyed by a hash of the judge model, the instructions,
the prompt, the answer and the reference: a rerun asks the judge nothing it has answered before,
and an interrupted run resumes where it stopped. The API key is read from the environment
variable named in the config and is never written anywhere.

A reply the parser cannot read is kept as an unparsed verdict (score None) and reported as
`judge_unparsed_rate`, never a crash; it is cached too, since at temperature 0 asking again
would most likely get the same reply.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tunewright.errors import TunewrightError
from tunewright.evaluate.stats import bootstrap_ci

if TYPE_CHECKING:
    from tunewright.config import JudgeConfig, RunConfig
    from tunewright.dataset.example import Example
    from tunewright.inference.generate import Generation

DEFAULT_RUBRIC = (
    "You are a strict, fair grader. Judge whether the assistant's answer to the question is "
    "correct and helpful, using the reference answer as the ground truth. An answer that states "
    "the same facts or reaches the same conclusion as the reference in other words is correct; "
    "extra detail is fine as long as it is accurate. Wrong, contradictory, evasive or off-topic "
    "answers are not."
)
_FORMAT = {
    "1-5": "Explain your judgement in one or two sentences, then give a rating from 1 (wrong or "
    "useless) to 5 (fully correct and helpful) in exactly this format: [[N]]",
    "pass_fail": "Explain your judgement in one or two sentences, then give your verdict in "
    "exactly this format: [[PASS]] or [[FAIL]]",
}
# Requests in flight at once: enough to hide network latency, few enough not to trip rate limits.
_CONCURRENT_REQUESTS = 8
_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class JudgeVerdict:
    score: float | None  # 1..5, or 1.0/0.0 for pass/fail; None when the reply could not be read
    reply: str  # the judge's reply, verbatim
    cached: bool  # read from the cache rather than asked now

    @property
    def parsed(self) -> bool:
        return self.score is not None


def instructions(cfg: JudgeConfig) -> str:
    """The judge's system message: the rubric, then how to write the score."""
    return f"{cfg.rubric or DEFAULT_RUBRIC}\n\n{_FORMAT[cfg.scale]}"


def judge_message(prompt: str, answer: str, reference: str) -> str:
    return (
        f"[Question]\n{prompt}\n\n[Reference answer]\n{reference}\n\n[Assistant's answer]\n{answer}"
    )


_BRACKETED = re.compile(r"\[\[\s*([^\[\]]+?)\s*\]\]")
_LABELLED = re.compile(
    r"\b(?:rating|score|grade)\s*(?:is|:|=)?\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE
)
_OUT_OF_FIVE = re.compile(r"\b(\d+(?:\.\d+)?)\s*/\s*5\b")
_VERDICT = re.compile(
    r"\b(?:verdict|grade|result)\s*(?:is|:|=)?\s*\**\s*(pass|fail)\b", re.IGNORECASE
)


def parse_reply(reply: str, scale: str) -> float | None:
    """The score in a judge's reply, or None. The last match wins: judges often quote the scale
    ("from 1 to 5") before giving their own rating."""
    text = reply.strip()
    read = _pass_or_fail if scale == "pass_fail" else _number
    patterns = (
        (_BRACKETED, _VERDICT) if scale == "pass_fail" else (_BRACKETED, _LABELLED, _OUT_OF_FIVE)
    )
    for pattern in patterns:
        for match in reversed(list(pattern.finditer(text))):
            score = read(match.group(1))
            if score is not None:
                return score
    return read(text.strip("*.! "))  # a bare "4" or "PASS"


def _pass_or_fail(text: str) -> float | None:
    word = text.strip().lower()
    return {"pass": 1.0, "fail": 0.0}.get(word)


def _number(text: str) -> float | None:
    try:
        score = float(text)
    except ValueError:
        return None
    return score if 1.0 <= score <= 5.0 else None


def cache_key(cfg: JudgeConfig, prompt: str, answer: str, reference: str) -> str:
    """Changing the judge model, the rubric or the scale invalidates a cached verdict; the
    endpoint URL does not (the same model served elsewhere judges the same way)."""
    blob = json.dumps([cfg.model, instructions(cfg), prompt, answer, reference], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _read_cache(path: Path) -> tuple[dict[str, dict], bool]:
    """The cached verdicts by key, and whether the file ends mid-line (a run killed while writing)."""
    rows: dict[str, dict] = {}
    if not path.is_file():
        return rows, False
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the torn last line of an interrupted run: that verdict is simply asked again
        rows[row["key"]] = row
    return rows, bool(text) and not text.endswith("\n")


def _api_key(cfg: JudgeConfig) -> str:
    if cfg.api_key_env is None:
        return "none"  # a local server without authentication; the client insists on some key
    key = os.environ.get(cfg.api_key_env, "")
    if not key:
        raise TunewrightError(
            f"evaluate.judge.api_key_env names {cfg.api_key_env}, which is not set: export "
            f"{cfg.api_key_env}=<key> (or set evaluate.judge.api_key_env: null for a server "
            "that needs no key)"
        )
    return key


def judge_answers(
    cfg: JudgeConfig,
    prompts: Sequence[str],
    answers: Sequence[str],
    references: Sequence[str],
    cache_path: Path,
) -> list[JudgeVerdict]:
    """Grade each answer against its reference; cached verdicts are reused, new ones appended."""
    if not len(prompts) == len(answers) == len(references):
        raise ValueError(
            f"{len(prompts)} prompts, {len(answers)} answers, {len(references)} references"
        )
    keys = [cache_key(cfg, p, a, r) for p, a, r in zip(prompts, answers, references)]
    cached, torn = _read_cache(cache_path)
    todo: dict[str, int] = {}  # key -> first example with it: each distinct question is asked once
    for i, key in enumerate(keys):
        if key not in cached:
            todo.setdefault(key, i)
    if todo:
        try:
            from openai import OpenAI
        except ImportError:
            raise TunewrightError(
                "the LLM judge needs the openai client: pip install 'tunewright[judge]'"
            ) from None

        client = OpenAI(
            base_url=cfg.base_url, api_key=_api_key(cfg), max_retries=2, timeout=_TIMEOUT_S
        )
        system = instructions(cfg)
        cache_path.parent.mkdir(parents=True, exist_ok=True)

        def ask(i: int) -> tuple[int, str]:
            return i, _ask(
                client, cfg, system, judge_message(prompts[i], answers[i], references[i])
            )

        pool = ThreadPoolExecutor(_CONCURRENT_REQUESTS)
        # appended one row at a time, so an interrupted run keeps what it already paid for
        with cache_path.open("a", encoding="utf-8") as f:
            if torn:
                f.write("\n")
            try:
                for i, reply in pool.map(ask, todo.values()):
                    row = {
                        "key": keys[i],
                        "model": cfg.model,
                        "score": parse_reply(reply, cfg.scale),
                        "reply": reply,
                        "prompt": prompts[i],
                        "answer": answers[i],
                        "reference": references[i],
                    }
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    f.flush()
                    cached[keys[i]] = row | {"fresh": True}
            finally:
                pool.shutdown(
                    cancel_futures=True
                )  # after a failed call, do not wait for hundreds more
                os.fsync(f.fileno())
    return [
        JudgeVerdict(
            score=cached[k]["score"], reply=cached[k]["reply"], cached=not cached[k].get("fresh")
        )
        for k in keys
    ]


def _ask(client, cfg: JudgeConfig, system: str, user: str) -> str:
    import openai

    try:
        response = client.chat.completions.create(
            model=cfg.model,
            temperature=0,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        )
    except openai.APIStatusError as e:
        raise TunewrightError(
            f"the judge at {cfg.base_url} refused the request (HTTP {e.status_code}): {e.message}"
        ) from None
    except openai.APIConnectionError as e:
        raise TunewrightError(
            f"cannot reach the judge at {cfg.base_url} (evaluate.judge.base_url): {e}"
        ) from None
    choices = response.choices or []
    return (choices[0].message.content or "") if choices else ""


def verdict_metrics(verdicts: Sequence[JudgeVerdict]) -> dict[str, dict[str, float]]:
    """`judge_score` (mean over readable verdicts, 95% bootstrap CI) and `judge_unparsed_rate`."""
    scores = np.array([v.score for v in verdicts if v.parsed], dtype=float)
    unparsed = np.array([not v.parsed for v in verdicts], dtype=float)
    nan = {"value": float("nan"), "low": float("nan"), "high": float("nan")}
    return {
        "judge_score": _interval(scores) if len(scores) else nan,
        "judge_unparsed_rate": _interval(unparsed) if len(unparsed) else nan,
    }


def _interval(values: np.ndarray) -> dict[str, float]:
    iv = bootstrap_ci(values)
    return {"value": iv.point, "low": iv.low, "high": iv.high}


def judge_metrics(
    cfg: RunConfig, examples: Sequence[Example], answers: Sequence[Generation]
) -> dict[str, dict]:
    """The evaluation runner's hook: judge one model's answers, return its judge metrics."""
    verdicts = judge_answers(
        cfg.evaluate.judge,
        [e.prompt_messages[-1].content for e in examples],
        [a.text for a in answers],
        [e.reference or "" for e in examples],
        cfg.run_dir / "eval" / "judge_cache.jsonl",
    )
    return verdict_metrics(verdicts)
