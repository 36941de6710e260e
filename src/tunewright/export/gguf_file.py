"""GGUF export for llama.cpp and Ollama: the merged model as one `.gguf` file (f16, bf16 or q8_0)
with the tokenizer and chat template in its metadata, plus an Ollama `Modelfile`.

Written with the `gguf` package's `GGUFWriter`, under the tensor names `gguf.get_tensor_name_map`
gives for `MODEL_ARCH.LLAMA`. llama.cpp's converter permutes the rows of the q and k projections
of Llama models (its rotary embedding pairs neighbouring dimensions, transformers' pairs the two
halves of each head); `_permute` is that permutation, and transformers' GGUF loader applies its
exact inverse when reading the file back, which the parity check after every export proves.

Only the Llama family is written: a file for another architecture needs other names, other
permutations and other metadata, and a wrong one loads without error and answers nonsense.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import gguf
import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunewright.export.gguf_vocab import gguf_vocab, write_vocab
from tunewright.export.publish import ExportError

GGUFQuant = Literal["f16", "bf16", "q8_0"]
QUANTS: tuple[GGUFQuant, ...] = ("f16", "bf16", "q8_0")
_FILE_TYPE = {
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
_Q8_0_BLOCK = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]  # 32 weights share one scale


def check_supported(model: PreTrainedModel) -> None:
    """Raise ExportError unless the model is a Llama we write correctly."""
    config = model.config
    if config.model_type != "llama":
        raise ExportError(
            f"GGUF export supports the Llama family only (model_type 'llama'); this model is "
            f"'{config.model_type}'. Export `merged` and convert it with llama.cpp's convert_hf_to_gguf.py."
        )
    rope = getattr(config, "rope_parameters", None) or {}
    unsupported = {
        "attention_bias": config.attention_bias,
        "mlp_bias": config.mlp_bias,
        "hidden_act": config.hidden_act if config.hidden_act != "silu" else None,
        "rope_type": rope.get("rope_type")
        if rope.get("rope_type", "default") != "default"
        else None,
    }
    unsupported = {k: v for k, v in unsupported.items() if v}
    if unsupported:
        raise ExportError(
            f"GGUF export does not write Llama variants with {unsupported} yet; export `merged` instead"
        )


def write_gguf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: Path,
    quant: GGUFQuant,
    name: str,
) -> dict[str, int]:
    """Write `model` (merged, fp32) as a GGUF file; returns how many tensors got each type."""
    check_supported(model)
    config = model.config
    vocab = gguf_vocab(tokenizer, config.vocab_size)
    head_dim = config.head_dim or config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    if (
        head_dim * config.num_attention_heads != config.hidden_size
    ):  # llama.cpp assumes it otherwise
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(_FILE_TYPE[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_vocab(writer, vocab)

    counts: dict[str, int] = {}
    for gguf_name, data in _llama_tensors(model):
        encoded, raw_dtype = _encode(data, quant)
        writer.add_tensor(gguf_name, encoded, raw_dtype=raw_dtype)
        kind = (
            raw_dtype.name
            if raw_dtype is not None
            else {np.float32: "F32", np.float16: "F16"}[encoded.dtype.type]
        )
        counts[kind] = counts.get(kind, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


def _llama_tensors(model: PreTrainedModel):
    """(GGUF name, fp32 numpy array) for every weight, q/k rows permuted as llama.cpp expects."""
    config = model.config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # no `output.weight` tells llama.cpp (and transformers) the head is tied
        stem, suffix = hf_name.rsplit(".", 1)
        gguf_name = name_map.get_name(stem)
        if gguf_name is None:
            raise ExportError(f"GGUF export: no llama.cpp name for the weight {hf_name}")
        data = tensor.detach().to(torch.float32).numpy()
        if stem.endswith("self_attn.q_proj"):
            data = _permute(data, config.num_attention_heads)
        elif stem.endswith("self_attn.k_proj"):
            data = _permute(data, config.num_key_value_heads)
        yield f"{gguf_name}.{suffix}", data


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order: within each head, interleave the two rotary halves.

    Exactly `convert_hf_to_gguf.py`'s `LlamaModel.permute` (called there with the kv head count
    for k); transformers' `LlamaTensorProcessor._reverse_permute_weights` undoes it.
    """
    shape = weights.shape
    return (
        weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
        .swapaxes(1, 2)
        .reshape(shape)
    )


def _encode(
    data: np.ndarray, quant: GGUFQuant
) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """The array to write and its raw GGML type (None: the writer infers it from the numpy dtype)."""
    if data.ndim == 1:
        return data.astype(np.float32), None  # norms stay f32, as llama.cpp's converter keeps them
    if quant == "bf16":
        bf16 = gguf.GGMLQuantizationType.BF16
        return gguf.quants.quantize(data, bf16), bf16
    if quant == "q8_0" and data.shape[-1] % _Q8_0_BLOCK == 0:
        q8 = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(data, q8), q8
    # f16, and q8_0 rows that are not a whole number of blocks (llama.cpp falls back the same way)
    return data.astype(np.float16), None


def load_gguf(folder: Path, filename: str):
    """Reload a GGUF file with transformers, dequantised to fp32: (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    # without GgufConfig(dequantize=True) transformers 5 returns a model that cannot run on CPU here
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=filename,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer
