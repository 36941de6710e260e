"""`tunewright chat`, fed from a script instead of a keyboard."""

import io

from rich.console import Console

from tunewright.serve.chat import chat


def test_chat_streams_answers_and_keeps_the_conversation(tiny_run):
    lines = iter(["I lost my card.", "/reset", "", "Where is my card?", "/exit", "never read"])
    out = io.StringIO()
    history = chat(
        str(tiny_run),
        temperature=0,
        max_tokens=8,
        console=Console(file=out, width=200),
        read_line=lambda _prompt: next(lines),
    )
    assert [m["role"] for m in history] == [
        "user",
        "assistant",
    ]  # /reset dropped the first exchange
    assert history[0]["content"] == "Where is my card?"
    printed = out.getvalue()
    assert "chatting with tuned" in printed and printed.count("model>") == 2
    assert history[1]["content"] in printed
