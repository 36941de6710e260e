"""Render examples with the model's chat template and mark which tokens are trained.

Loss goes on assistant turns only, including the end-of-turn token that closes each of them
(a model that never sees that token trained does not learn to stop). The trained spans are
found in character space from the rendered text, then mapped onto tokens with the fast
tokenizer's offsets, so any chat template that renders conversations as a growing prefix works.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from transformers import PreTrainedTokenizerBase

from tunewright.dataset.example import Example, Message
from tunewright.errors import DataError

IGNORE_INDEX = -100  # labels with this value carry no loss (the torch cross-entropy convention)


class TooLongError(DataError):
    """An example with more tokens than `max_seq_len`; the message names its source."""

    def __init__(self, message: str, length: int) -> None:
        super().__init__(message)
        self.length = length  # the example's tokens, chat template applied


@dataclass(frozen=True, slots=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where not trained
    loss_weights: list[float] | None = None  # per token; None = all trained tokens weigh 1

    @property
    def num_trained_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


@dataclass(frozen=True, slots=True)
class TokenizedPair:
    """A preference pair as two sequences sharing their prompt tokens; only each final answer
    (with its end-of-turn token) is labelled, since preference losses compare those alone."""

    chosen: TokenizedExample
    rejected: TokenizedExample

    @property
    def prompt_tokens(self) -> int:
        """Leading tokens the two sides share (the prompt, and possibly an answer's start)."""
        n = 0
        for a, b in zip(self.chosen.input_ids, self.rejected.input_ids):
            if a != b:
                break
            n += 1
        return n


class ChatTokenizer:
    """Turns `Example`s into token ids with a training mask, and prompts into generation inputs."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, system_prompt: str | None, max_seq_len: int
    ):
        if tokenizer.chat_template is None:
            raise DataError(
                "the model's tokenizer has no chat template; use raw-text data or a chat model"
            )
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.max_seq_len = max_seq_len
        self.eos_text = tokenizer.eos_token

    def _with_system(self, messages: tuple[Message, ...]) -> list[dict]:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        if self.system_prompt and (not chat or chat[0]["role"] != "system"):
            chat.insert(0, {"role": "system", "content": self.system_prompt})
        return chat

    def _render(self, chat: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=generation_prompt
        )

    def prompt_text(self, messages: tuple[Message, ...]) -> str:
        """The text a model sees when asked to answer after `messages`."""
        return self._render(self._with_system(messages), generation_prompt=True)

    def encode_prompt(self, messages: tuple[Message, ...]) -> list[int]:
        return self.tokenizer(self.prompt_text(messages), add_special_tokens=False)["input_ids"]

    def trained_spans(self, chat: list[dict]) -> tuple[str, list[tuple[int, int, float]]]:
        """The full rendered text and the (start, end, weight) character spans to train on."""
        full = self._render(chat, generation_prompt=False)
        spans = []
        for i, message in enumerate(chat):
            if message["role"] != "assistant":
                continue
            weight = message.get("weight")
            weight = 1.0 if weight is None else weight
            before = self._render(chat[:i], generation_prompt=True)
            through = self._render(chat[: i + 1], generation_prompt=False)
            if not (through.startswith(before) and full.startswith(through)):
                raise DataError(
                    "the chat template does not render conversations as a growing prefix; "
                    "cannot tell which tokens are the assistant's"
                )
            end = len(through)
            eos_at = through.rfind(self.eos_text, len(before)) if self.eos_text else -1
            if eos_at >= 0:
                end = eos_at + len(self.eos_text)  # train the end-of-turn token, not what follows
            if weight > 0:
                spans.append((len(before), end, weight))
        return full, spans

    def encode_example(self, example: Example) -> TokenizedExample:
        """Token ids and labels for training; raises DataError if the example is too long."""
        if not example.is_chat:
            ids = self.tokenizer(example.text, add_special_tokens=False)["input_ids"]
            if self.tokenizer.eos_token_id is not None:
                ids = ids + [self.tokenizer.eos_token_id]
            return TokenizedExample(ids[: self.max_seq_len], list(ids[: self.max_seq_len]))
        chat = self._with_system(example.messages)
        for m, src in zip(chat[-len(example.messages) :], example.messages):
            if src.weight is not None:
                m["weight"] = src.weight
        full, spans = self.trained_spans([dict(m) for m in chat])
        encoded = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        if len(ids) > self.max_seq_len:
            raise TooLongError(
                f"{example.source}: {len(ids)} tokens, over data.max_seq_len={self.max_seq_len}",
                len(ids),
            )
        labels = [IGNORE_INDEX] * len(ids)
        weights = [0.0] * len(ids)
        for t, (start, _end) in enumerate(offsets):
            for span_start, span_end, weight in spans:
                if span_start <= start < span_end:
                    labels[t] = ids[t]
                    weights[t] = weight
                    break
        has_weights = any(w not in (0.0, 1.0) for w in weights)
        return TokenizedExample(ids, labels, weights if has_weights else None)

    def encode_pair(self, example: Example) -> TokenizedPair:
        """Both sides of a preference pair, earlier assistant turns untrained; raises
        TooLongError (naming the side) if either is over `max_seq_len`."""
        sides = []
        for side, ex in (("chosen", example), ("rejected", example.rejected_example)):
            *earlier, last = ex.messages
            untrained = tuple(
                replace(m, weight=0.0) if m.role == "assistant" else m for m in earlier
            )
            try:
                encoded = self.encode_example(replace(ex, messages=(*untrained, last)))
            except TooLongError as e:
                raise TooLongError(f"{e} (the {side} side)", e.length) from None
            sides.append(encoded)
        return TokenizedPair(*sides)
