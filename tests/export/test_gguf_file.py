"""GGUF writing details: the tokenizer round-trips through transformers' GGUF loader, q8_0
blocks, and other architectures are refused."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from tunewright.export.gguf_file import _encode, _permute, check_supported, write_gguf
from tunewright.export.publish import ExportError
from tunewright.models import load_model

SAMPLES = [
    "I lost my card!",
    "  two leading spaces, tabs\tand\nnewlines",
    "digits 1234567 and 3.14",
    "unicode: café, 日本語, emoji 🙂",
    "<|im_start|>user\nhi<|im_end|>\n",
]


def test_tokenizer_and_chat_template_round_trip(tiny_model_dir, tmp_path):
    loaded = load_model(str(tiny_model_dir))
    write_gguf(loaded.model, loaded.tokenizer, tmp_path / "m.gguf", "f16", "tiny")
    back = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    for text in SAMPLES:
        assert back(text)["input_ids"] == loaded.tokenizer(text)["input_ids"], text
        assert back.decode(back(text)["input_ids"]) == text
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    render = lambda tok: tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert render(back) == render(loaded.tokenizer)
    for name in ("bos_token", "eos_token", "pad_token"):
        assert getattr(back, name) == getattr(loaded.tokenizer, name), name


def test_permutation_is_the_inverse_of_transformers_loader():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weights = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)  # 8 heads of dim 16
    loader = LlamaTensorProcessor(config={"num_attention_heads": 8, "num_key_value_heads": 2})
    for n_head, name in ((8, "blk.0.attn_q.weight"), (2, "blk.0.attn_k.weight")):
        w = weights[: n_head * 16]
        assert np.array_equal(loader.process(_permute(w, n_head), name).weights, w)


def test_q8_0_quantises_whole_blocks_and_keeps_other_rows_f16():
    assert (
        _encode(np.ones((4, 64), np.float32), "q8_0")[1].name == "Q8_0"
    )  # hidden 64 = two blocks of 32
    encoded, raw = _encode(
        np.ones((4, 48), np.float32), "q8_0"
    )  # 48 is not a whole number of blocks
    assert raw is None and encoded.dtype == np.float16
    assert _encode(np.ones(64, np.float32), "q8_0")[0].dtype == np.float32  # norms stay f32


def test_other_architectures_are_refused_with_a_clear_message():
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    with pytest.raises(ExportError, match="Llama family only .*'qwen2'.*convert_hf_to_gguf"):
        check_supported(qwen)
