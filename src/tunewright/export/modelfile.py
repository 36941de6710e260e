"""An Ollama `Modelfile` next to a GGUF file: `ollama create NAME -f Modelfile` imports it.

Ollama templates are Go templates, not Jinja, so the chat template cannot be translated in
general. ChatML (`<|im_start|>`, what SmolLM2 and Qwen use) is written out; for any other
template the TEMPLATE line is left out and Ollama picks its template from the
`tokenizer.chat_template` stored in the GGUF file.
"""

from __future__ import annotations

import re

from transformers import PreTrainedTokenizerBase

from tunewright.inference.tokens import stop_token_ids

_CHATML_TEMPLATE = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"


def modelfile(gguf_name: str, tokenizer: PreTrainedTokenizerBase, system_prompt: str | None) -> str:
    """The Modelfile text for `gguf_name` (a file in the same folder)."""
    lines = [
        "# ollama create <name> -f Modelfile    (written by tunewright export)",
        f"FROM ./{gguf_name}",
        "",
    ]
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    chatml = "<|im_start|>" in template
    if chatml:
        lines.append(f'TEMPLATE """{_CHATML_TEMPLATE}"""')
    else:
        lines.append("# no TEMPLATE: Ollama reads the chat template stored in the GGUF file")
    system = system_prompt or (_default_system(tokenizer) if chatml else None)
    if system:
        # the model was tuned (and evaluated) with this system prompt; without it, it answers worse
        lines.append(f'SYSTEM """{system}"""')
    for token_id in stop_token_ids(tokenizer):
        lines.append(f'PARAMETER stop "{tokenizer.convert_ids_to_tokens(token_id)}"')
    return "\n".join(lines) + "\n"


def _default_system(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The system message a ChatML template inserts when a chat has none."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    match = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", rendered, re.DOTALL)
    return match.group(1) if match else None
