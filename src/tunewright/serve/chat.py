"""`tunewright chat`: talk to a model or a tuned run in the terminal, the answer streamed as it is
generated. It runs the serving engine in-process (no HTTP server), so what you see here is what
`tunewright serve` answers.
"""

from __future__ import annotations

import queue
from collections.abc import Callable

from rich.console import Console

from tunewright.inference.engine import Delta, Engine, Job, Sampling
from tunewright.serve.registry import load_models


def chat(
    source: str,
    *,
    system_prompt: str | None = None,
    max_tokens: int = 512,
    temperature: float = 0.7,
    top_p: float = 0.95,
    console: Console | None = None,
    read_line: Callable[[str], str] = input,
) -> list[dict[str, str]]:
    """Chat with `source` (a model name or a run folder) until /exit or end of input.

    A LoRA run chats with the tuned model (the base model with the run's adapter). Returns the
    conversation.
    """
    console = console or Console()
    models = load_models([source])
    served = next((m for m in models.served.values() if m.adapter is not None), None) or next(
        iter(models.served.values())
    )
    engine = Engine(
        models.model, models.tokenizer, max_batch_size=1, adapters=models.has_adapters
    ).start()
    history: list[dict[str, str]] = (
        [{"role": "system", "content": system_prompt}] if system_prompt else []
    )
    console.print(
        f"chatting with [bold]{served.name}[/] - /reset starts over, /exit (or Ctrl-D) quits",
        highlight=False,
    )
    try:
        while True:
            try:
                line = read_line("you> ").strip()
            except EOFError:
                break
            if line in ("/exit", "/quit"):
                break
            if line == "/reset":
                del history[1 if system_prompt else 0 :]
                continue
            if not line:
                continue
            history.append({"role": "user", "content": line})
            prompt = models.chat_prompt_ids(served, history)
            if len(prompt) + max_tokens > models.max_context:
                console.print(
                    "[yellow]the conversation no longer fits the context; /reset to start over[/]"
                )
                history.pop()
                continue
            answer = _stream_answer(
                engine,
                Job(prompt, Sampling(max_tokens, temperature, top_p), None, adapter=served.adapter),
                console,
            )
            history.append({"role": "assistant", "content": answer})
    finally:
        engine.close()
    return history


def _stream_answer(engine: Engine, job: Job, console: Console) -> str:
    deltas: queue.Queue[Delta] = queue.Queue()
    job.on_delta = deltas.put
    engine.submit(job)
    console.print("[bold]model>[/] ", end="")
    parts = []
    try:
        while True:
            delta = deltas.get()
            parts.append(delta.text)
            console.file.write(delta.text)  # raw: answers are not rich markup
            console.file.flush()
            if delta.error:
                console.print(f"\n[red]{delta.error}[/]")
            if delta.finish_reason:
                break
    except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
        job.cancel()
        console.print("[yellow] (stopped)[/]", end="")
    console.file.write("\n")
    return "".join(parts)
