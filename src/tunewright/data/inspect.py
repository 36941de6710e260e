"""Show what the model sees: rendered, tokenised examples with the untrained tokens dimmed.

Each token is printed as its text; tokens that carry no loss (system prompt, user turns, the
template's headers) are dimmed, trained tokens are bold, and token boundaries alternate two
colours so merges are visible. Then the check that catches the most common fine-tuning bug: is
the end-of-turn/EOS token trained in every chat example? A model that never sees it trained
never learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.text import Text

from tunewright.dataset.example import Example
from tunewright.dataset.tokenize import IGNORE_INDEX, ChatTokenizer, TokenizedExample

_TRAINED_STYLES = ("bold green", "bold cyan")
_UNTRAINED_STYLES = ("dim", "dim italic")


@dataclass
class InspectReport:
    shown: int
    checked: int  # chat examples whose end-of-turn token was checked
    eos_untrained: list[str]  # sources of examples whose final end-of-turn token is not trained
    eos_token: str | None

    @property
    def eos_ok(self) -> bool:
        return self.eos_token is not None and not self.eos_untrained


def render_tokens(chat: ChatTokenizer, encoded: TokenizedExample) -> Text:
    """The example's tokens as styled text: trained bold, untrained dimmed."""
    text = Text()
    for k, (token_id, label) in enumerate(zip(encoded.input_ids, encoded.labels)):
        piece = chat.tokenizer.decode([token_id])
        piece = piece.replace("\n", "↵\n")  # make line breaks visible tokens
        styles = _TRAINED_STYLES if label != IGNORE_INDEX else _UNTRAINED_STYLES
        text.append(piece, style=styles[k % 2])
    return text


def eos_trained(chat: ChatTokenizer, encoded: TokenizedExample) -> bool:
    """Whether the last end-of-turn/EOS token of the example carries loss."""
    eos_id = chat.tokenizer.eos_token_id
    positions = [k for k, t in enumerate(encoded.input_ids) if t == eos_id]
    return bool(positions) and encoded.labels[positions[-1]] != IGNORE_INDEX


def inspect_examples(
    chat: ChatTokenizer,
    examples: list[Example],
    console: Console,
    *,
    show: int = 3,
    check: int = 1000,
) -> InspectReport:
    """Print the first `show` examples tokenised, and check the EOS token on the first `check`."""
    eos = chat.tokenizer.eos_token
    untrained: list[str] = []
    checked = 0
    for k, example in enumerate(examples[: max(show, check)]):
        if example.is_preference:  # both sides, as preference training encodes them
            pair = chat.encode_pair(example)
            sides = [("chosen", pair.chosen), ("rejected", pair.rejected)]
        else:
            sides = [("", chat.encode_example(example))]
        encoded = sides[0][1]
        for side, side_encoded in sides if k < show else ():
            trained = side_encoded.num_trained_tokens
            console.rule(
                f"{example.source}{'  ·  ' + side if side else ''}  ·  "
                f"{len(side_encoded.input_ids)} tokens, {trained} trained",
                style="dim",
            )
            console.print(render_tokens(chat, side_encoded))
        if example.is_chat and k < check:
            checked += 1
            if not eos_trained(chat, encoded):
                untrained.append(example.source)
    report = InspectReport(min(show, len(examples)), checked, untrained, eos)
    console.rule(style="dim")
    console.print(
        Text.assemble(("dimmed: not trained", "dim"), "   ", ("bold: trained", "bold green"))
    )
    if checked == 0:
        console.print("no chat examples: the EOS check applies to chat data only")
    elif eos is None:
        console.print(
            "[bold red]✗ the tokenizer has no EOS token: the model cannot learn to stop[/]"
        )
    elif untrained:
        console.print(
            f"[bold red]✗ the end-of-turn token {eos!r} is NOT trained in {len(untrained)} of {checked} "
            f"examples[/] (first: {untrained[0]}): the model will not learn to stop answering"
        )
    else:
        console.print(
            f"[bold green]✓[/] the end-of-turn token {eos!r} is trained in all {checked} checked examples"
        )
    return report
