"""Proof that an export is the same model: reload what was written and compare it with the tuned
model in memory on a fixed set of prompts.

Two figures: the largest absolute difference between the two models' logits at every prompt
position (teacher-forced on the same token ids), and the share of prompts on which both models
give the same greedy answer. Each side renders and tokenises the prompts with its *own* tokenizer
and chat template, so a tokenizer that did not survive the export shows up as disagreement too
(and is counted separately as `tokenizer_agreement`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from tunewright.dataset.example import Message
from tunewright.dataset.tokenize import ChatTokenizer
from tunewright.inference.generate import generate
from tunewright.inference.padding import left_pad
from tunewright.inference.tokens import pad_token_id
from tunewright.runs import RunFolder, open_prepared

# Greedy-answer agreement an export must reach to be published. Quantised formats round every
# weight, so a near-tie between two tokens can flip; the fp formats should agree almost always.
MIN_GREEDY_AGREEMENT = {"adapter": 0.99, "merged": 0.99, "f16": 0.99, "bf16": 0.95, "q8_0": 0.95}

# Used only when the run folder has no prepared test split.
FALLBACK_QUESTIONS = (
    "Hello! Who are you?",
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "I lost my card, what should I do?",
    "How do I reset my password?",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Name three colours.",
)
_BATCH = (
    32  # prompts per forward pass; logits of a batch are batch x tokens x vocab floats (~200 MB)
)


@dataclass
class ParityReport:
    artifact: str  # adapter, merged, gguf-f16, gguf-bf16, gguf-q8_0
    model: str  # the base model the run tuned
    prompts: int
    prompt_source: str  # where the prompts came from
    max_new_tokens: int
    max_logit_diff: float
    mean_logit_diff: float
    greedy_agreement: float
    tokenizer_agreement: float
    min_greedy_agreement: float
    passed: bool
    disagreements: list[dict] = field(default_factory=list)  # the first few, for a human to read

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        verdict = "ok" if self.passed else f"FAILED (needs {self.min_greedy_agreement:.0%})"
        return (
            f"{self.artifact}: max logit diff {self.max_logit_diff:.3g}, greedy agreement "
            f"{self.greedy_agreement:.1%} on {self.prompts} prompts, tokenizer agreement "
            f"{self.tokenizer_agreement:.1%} [{verdict}]"
        )


@dataclass
class ParityPrompts:
    conversations: list[tuple[Message, ...]]
    system_prompt: str | None
    source: str
    max_new_tokens: int


class Reference:
    """The tuned model in memory, with its greedy answers computed once for every export."""

    def __init__(
        self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: ParityPrompts
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.ids = _encode(tokenizer, prompts)
        self._answers: list[str] | None = None

    @property
    def answers(self) -> list[str]:
        if self._answers is None:
            self._answers = _greedy(
                self.model, self.tokenizer, self.ids, self.prompts.max_new_tokens
            )
        return self._answers


def check_parity(
    reference: Reference,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    artifact: str,
    base_model: str,
    min_greedy_agreement: float,
) -> ParityReport:
    """Compare a reloaded export with the reference on the reference's prompts."""
    model.eval()
    ids = _encode(tokenizer, reference.prompts)
    max_diff, mean_diff = _logit_diffs(
        reference.model, model, reference.ids, pad_token_id(reference.tokenizer)
    )
    answers = _greedy(model, tokenizer, ids, reference.prompts.max_new_tokens)
    same = [a == b for a, b in zip(reference.answers, answers)]
    n = len(same)
    agreement = sum(same) / n
    disagreements = [
        {
            "prompt": reference.prompts.conversations[i][-1].content,
            "tuned": reference.answers[i],
            "exported": answers[i],
        }
        for i in range(n)
        if not same[i]
    ][:5]
    return ParityReport(
        artifact=artifact,
        model=base_model,
        prompts=n,
        prompt_source=reference.prompts.source,
        max_new_tokens=reference.prompts.max_new_tokens,
        max_logit_diff=max_diff,
        mean_logit_diff=mean_diff,
        greedy_agreement=agreement,
        tokenizer_agreement=sum(a == b for a, b in zip(reference.ids, ids)) / n,
        min_greedy_agreement=min_greedy_agreement,
        passed=agreement >= min_greedy_agreement,
        disagreements=disagreements,
    )


def load_parity_prompts(
    run_dir: Path, system_prompt: str | None, max_new_tokens: int, limit: int | None
) -> ParityPrompts:
    """The run's test prompts (the first `limit`, in file order), or a small built-in set."""
    run = RunFolder(run_dir)
    data = run.data_dir
    if run.has_prepared_data():
        conversations = [e.prompt_messages for e in open_prepared(run_dir).test if e.is_chat][
            : limit or None
        ]
        if conversations:
            return ParityPrompts(
                conversations, system_prompt, f"{data} (test split)", max_new_tokens
            )
    conversations = [(Message("user", q),) for q in FALLBACK_QUESTIONS]
    return ParityPrompts(conversations, system_prompt, "built-in questions", max_new_tokens)


def _encode(tokenizer: PreTrainedTokenizerBase, prompts: ParityPrompts) -> list[list[int]]:
    chat = ChatTokenizer(tokenizer, prompts.system_prompt, max_seq_len=1 << 30)
    return [chat.encode_prompt(c) for c in prompts.conversations]


def _greedy(model, tokenizer, ids: list[list[int]], max_new_tokens: int) -> list[str]:
    return [
        g.text
        for g in generate(model, tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=_BATCH)
    ]


@torch.inference_mode()
def _logit_diffs(
    a: torch.nn.Module, b: torch.nn.Module, prompts: list[list[int]], pad_id: int
) -> tuple[float, float]:
    """(max, mean) absolute logit difference over every real (non-padding) prompt position."""
    max_diff, total, count = 0.0, 0.0, 0
    for start in range(0, len(prompts), _BATCH):
        batch = prompts[start : start + _BATCH]
        padded = left_pad(batch, pad_id)  # the layout generation uses
        mask = padded.attention_mask
        kwargs = {
            "input_ids": padded.input_ids,
            "attention_mask": mask,
            "position_ids": padded.position_ids,
        }
        diff = (a(**kwargs).logits.float() - b(**kwargs).logits.float()).abs()
        real = diff[mask.bool()]  # (real positions, vocab)
        max_diff = max(max_diff, float(real.max()))
        total += float(real.sum(dtype=torch.float64))
        count += real.numel()
    return max_diff, total / max(count, 1)
