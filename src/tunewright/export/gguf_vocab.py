"""The tokenizer as GGUF metadata: what llama.cpp reads, and what transformers' GGUF tokenizer
loader rebuilds a tokenizer from (`tokenizer.ggml.*` keys and `tokenizer.chat_template`).

Only byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`, what SmolLM2, Llama 3 and Qwen
use) are written. The pre-tokenizer is named by llama.cpp's `tokenizer.ggml.pre` string; one we
cannot name exactly is refused, since a wrong name tokenises differently without any error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import gguf
from transformers import PreTrainedTokenizerBase

from tunewright.export.publish import ExportError


@dataclass
class GGUFVocab:
    pre: str  # llama.cpp's pre-tokenizer name
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # bos, eos, unk, pad -> id
    add_bos: bool
    add_eos: bool
    chat_template: str | None


def gguf_vocab(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> GGUFVocab:
    """Read everything GGUF needs from a fast tokenizer, padding the vocabulary to `vocab_size`."""
    if not tokenizer.is_fast:
        raise ExportError("GGUF export needs a fast (tokenizers-backed) tokenizer")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, decoder = spec["model"], spec.get("decoder") or {}
    if model["type"] != "BPE" or decoder.get("type") != "ByteLevel":
        raise ExportError(
            f"GGUF export supports byte-level BPE tokenizers only; this one is {model['type']} with a "
            f"{decoder.get('type')} decoder"
        )
    if spec.get("normalizer") is not None:
        raise ExportError(
            "GGUF export: the tokenizer has a normalizer, which llama.cpp's BPE vocabulary cannot express"
        )
    backend = tokenizer.backend_tokenizer
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        token = backend.id_to_token(i)
        if token is None:  # the embedding matrix is larger than the vocabulary
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(token)
            types.append(
                gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    if len(tokenizer) > vocab_size:
        raise ExportError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} embeddings"
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    special_ids = {
        name: token_id
        for name, token_id in (
            ("bos", tokenizer.bos_token_id),
            ("eos", tokenizer.eos_token_id),
            ("unk", tokenizer.unk_token_id),
            ("pad", tokenizer.pad_token_id),
        )
        if token_id is not None
    }
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    with_specials = tokenizer("a")["input_ids"]
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    return GGUFVocab(
        pre=pre_tokenizer_name(spec.get("pre_tokenizer")),
        tokens=tokens,
        token_types=[int(t) for t in types],
        merges=merges,
        special_ids=special_ids,
        add_bos=len(with_specials) > len(plain) and with_specials[0] == tokenizer.bos_token_id,
        add_eos=len(with_specials) > len(plain) and with_specials[-1] == tokenizer.eos_token_id,
        chat_template=template,
    )


def write_vocab(writer: gguf.GGUFWriter, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    adders = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id,
    }
    for name, token_id in vocab.special_ids.items():
        adders[name](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a tokenizers pre-tokenizer spec, or ExportError if it has none."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    if pre is None:
        raise ExportError(
            "GGUF export: the tokenizer has no pre-tokenizer; llama.cpp would split text differently"
        )
    if pre["type"] == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    steps = pre.get("pretokenizers", []) if pre["type"] == "Sequence" else []
    kinds = [s["type"] for s in steps]
    if (
        kinds == ["Digits", "ByteLevel"]
        and steps[0].get("individual_digits")
        and steps[1].get("use_regex", True)
    ):
        return "smollm"  # SmolLM's own tokenizer.json: single digits, then the GPT-2 split
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        for name, known in GGUF_PRE_TOKENIZER_SPLITS.items():  # names are llama.cpp's, first wins
            if regex == known:
                return name
    raise ExportError(
        f"GGUF export: the tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}) has no llama.cpp name we "
        "can match exactly; a guessed one would tokenise differently. Export `merged` and convert it "
        "with llama.cpp's convert_hf_to_gguf.py instead."
    )
