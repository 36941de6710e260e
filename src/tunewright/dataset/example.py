"""The canonical example every input format normalises to."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # one of ROLES
    content: str
    weight: float | None = None  # assistant turns only: 0 = not trained, None/1 = trained


@dataclass(frozen=True, slots=True)
class Example:
    """One training/evaluation example.

    Chat examples have `messages`; raw-text examples (continued pre-training) have `text`.
    `label` is set for classification data (text+label): the assistant answer is the label.
    `source` is `file:line` so every later message can point back to the input.
    Preference pairs (DPO/ORPO) have `rejected`: `messages` ends with the chosen answer, and
    `rejected` is the answer a person preferred less to the same prompt (`prompt_messages`).
    """

    messages: tuple[Message, ...] = ()
    text: str | None = None
    label: str | None = None
    source: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    rejected: str | None = None

    @property
    def is_preference(self) -> bool:
        return self.rejected is not None

    @property
    def rejected_example(self) -> Example:
        """The same prompt answered with `rejected` in place of the chosen answer."""
        if self.rejected is None:
            raise ValueError(f"{self.source}: not a preference pair")
        return replace(
            self,
            messages=(*self.prompt_messages, Message("assistant", self.rejected)),
            rejected=None,
        )

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)

    @property
    def prompt_messages(self) -> tuple[Message, ...]:
        """Everything before the final assistant turn: what a model is asked at evaluation."""
        last = len(self.messages) - 1
        while last >= 0 and self.messages[last].role != "assistant":
            last -= 1
        return self.messages[:last] if last >= 0 else self.messages

    @property
    def reference(self) -> str | None:
        """The final assistant answer (the label for classification data)."""
        for m in reversed(self.messages):
            if m.role == "assistant":
                return m.content
        return self.text

    def to_json(self) -> dict:
        row: dict = {"source": self.source}
        if self.messages:
            row["messages"] = [
                {"role": m.role, "content": m.content}
                | ({"weight": m.weight} if m.weight is not None else {})
                for m in self.messages
            ]
        if self.text is not None:
            row["text"] = self.text
        if self.label is not None:
            row["label"] = self.label
        if self.meta:
            row["meta"] = self.meta
        if self.rejected is not None:
            row["rejected"] = self.rejected
        return row

    @classmethod
    def from_json(cls, row: dict) -> Example:
        return cls(
            messages=tuple(
                Message(m["role"], m["content"], m.get("weight")) for m in row.get("messages", ())
            ),
            text=row.get("text"),
            label=row.get("label"),
            source=row.get("source", ""),
            meta=row.get("meta", {}),
            rejected=row.get("rejected"),
        )
