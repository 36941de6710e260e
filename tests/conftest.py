"""Shared fixtures: a tiny random-init chat model built locally (nothing is downloaded)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    texts = []
    for name in ("intents_train.csv", "intents_test.csv"):
        with (FIXTURES / name).open() as f:
            for row in csv.DictReader(f):
                texts += [row["text"], row["category"]]
    return texts + [
        "system",
        "user",
        "assistant",
        "You are a helpful assistant.",
        "Name the intent.",
    ]


def build_tiny_model(folder: Path, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A tiny Llama (2 layers unless told) with a byte-level BPE tokenizer trained on the fixture
    texts, saved as safetensors."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        # a larger init than the default 0.02: with frozen norms and tied embeddings, LoRA can only
        # reach logits as large as |embedding row| * sqrt(hidden) allows
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_4_layer_model_dir(tmp_path_factory) -> Path:
    """For training the top layers only, with frozen layers below them."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-4-layer-model"), layers=4)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's ~/.cache/tunewright from tests."""
    monkeypatch.setenv("TUNEWRIGHT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP threads that
    spin-wait for each other can make a tiny step 100x slower."""
    torch.set_num_threads(1)
