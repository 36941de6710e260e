"""The cascade path (prefix kept once, rows' own keys in a preallocated cache) against transformers'
own attention and plain per-prompt `model.generate` with no sharing."""

import pytest
import torch
from transformers import DynamicCache

from tunewright.dataset.example import Message
from tunewright.dataset.tokenize import ChatTokenizer
from tunewright.inference import shared_prefix
from tunewright.inference.generate import (
    MIN_SHARED_PREFIX_TOKENS,
    generate,
    label_trie,
    row_caches_fit,
    shared_prefix_length,
)
from tunewright.inference.shared_prefix import (
    RowCache,
    SharedPrefix,
    cascade_attention,
    prefix_of,
)
from tunewright.inference.tokens import pad_token_id, stop_token_ids
from tunewright.models import load_model

SYSTEM = (
    "Name the intent. Answer with exactly one of: card_arrival, exchange_rate, lost_or_stolen_card"
)
QUESTIONS = [
    "Where is my new card?",
    "hi",
    "What is the exchange rate today? Tell me.",
    "card",
    "rate?",
    "Why was I charged a fee for taking out cash in another currency abroad last week?",
    "I lost my card.",
]
LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate"]


class _Head(torch.nn.Module):
    layer_idx = 0
    num_key_value_groups = 3


@pytest.mark.parametrize("rows_per_chunk", ["all", "one"])
def test_cascade_attention_is_softmax_over_prefix_and_own_keys(monkeypatch, rows_per_chunk):
    """Merging the prefix's part and the row's own part equals one softmax over both, with the
    row's mask applied to its own keys only and the query heads sharing KV heads in groups
    (also when a long prefill is split into chunks of rows)."""
    if rows_per_chunk == "one":
        monkeypatch.setattr(shared_prefix, "MAX_SCORES_PER_CHUNK", 1)
    torch.manual_seed(0)
    rows, heads, kv_heads, dim, prefix_len, own, q_len = 4, 6, 2, 8, 10, 7, 3
    prefix = SharedPrefix(
        keys=[torch.randn(kv_heads, prefix_len, dim)],
        values=[torch.randn(kv_heads, prefix_len, dim)],
    )
    query = torch.randn(rows, heads, q_len, dim)
    key, value = torch.randn(rows, kv_heads, own, dim), torch.randn(rows, kv_heads, own, dim)
    mask = torch.rand(rows, 1, q_len, own) > 0.4
    mask[0, 0, 0] = False  # a query that sees none of its own keys, only the prefix
    reset = shared_prefix._ACTIVE_PREFIX.set(prefix)
    try:
        got, _ = cascade_attention(_Head(), query, key, value, mask, scaling=dim**-0.5)
    finally:
        shared_prefix._ACTIVE_PREFIX.reset(reset)
    full_keys = torch.cat([prefix.keys[0].expand(rows, -1, -1, -1), key], dim=2)
    full_values = torch.cat([prefix.values[0].expand(rows, -1, -1, -1), value], dim=2)
    full_mask = torch.cat([torch.ones(rows, 1, q_len, prefix_len, dtype=torch.bool), mask], -1)
    group = heads // kv_heads
    expected = torch.nn.functional.scaled_dot_product_attention(
        query,
        full_keys.repeat_interleave(group, dim=1),
        full_values.repeat_interleave(group, dim=1),
        attn_mask=full_mask,
    ).transpose(1, 2)
    assert got.shape == (rows, q_len, heads, dim)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_cascade_attention_without_prefix_at_decode_equals_sdpa():
    torch.manual_seed(0)
    query, key = torch.randn(3, 6, 1, 8), torch.randn(3, 2, 9, 8)
    value = torch.randn(3, 2, 9, 8)
    mask = torch.rand(3, 1, 1, 9) > 0.3
    mask[..., -1] = True  # a row always sees the token it is decoding
    got, _ = cascade_attention(_Head(), query, key, value, mask, scaling=8**-0.5)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(3, dim=1), value.repeat_interleave(3, dim=1), attn_mask=mask
    ).transpose(1, 2)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_cascade_attention_in_bf16_stays_close_to_float32():
    torch.manual_seed(0)
    prefix = SharedPrefix(keys=[torch.randn(2, 300, 16)], values=[torch.randn(2, 300, 16)])
    query, key, value = torch.randn(4, 6, 1, 16), torch.randn(4, 2, 5, 16), torch.randn(4, 2, 5, 16)
    mask = torch.ones(4, 1, 1, 5, dtype=torch.bool)
    reset = shared_prefix._ACTIVE_PREFIX.set(prefix)
    try:
        exact, _ = cascade_attention(_Head(), query, key, value, mask)
        low = SharedPrefix([prefix.keys[0].bfloat16()], [prefix.values[0].bfloat16()])
        shared_prefix._ACTIVE_PREFIX.set(low)
        got, _ = cascade_attention(
            _Head(), query.bfloat16(), key.bfloat16(), value.bfloat16(), mask
        )
    finally:
        shared_prefix._ACTIVE_PREFIX.reset(reset)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), exact, atol=2e-2, rtol=2e-2)


def test_row_cache_grows_without_reallocating():
    cache = RowCache(num_layers=1, capacity=5, prefix_length=3)
    assert cache.get_seq_length() == 3
    k = torch.randn(2, 1, 2, 4)
    keys, _ = cache.update(k, k, 0)
    buffer = cache.layers[0].keys
    keys, _ = cache.update(k[:, :, :1], k[:, :, :1], 0)
    assert cache.layers[0].keys is buffer and keys.shape[2] == 3
    assert cache.get_seq_length() == 6
    assert cache.get_mask_sizes(1, 0) == (4, 3)  # own keys + the query, after the prefix
    with pytest.raises(ValueError, match="holds 5 tokens"):
        cache.update(k.repeat(1, 1, 2, 1), k.repeat(1, 1, 2, 1), 0)


def _plain(model, tokenizer, prompt, max_new_tokens, allowed=None):
    """transformers' own generate on one prompt: default cache and attention, nothing shared."""
    stops = stop_token_ids(tokenizer)
    options = {}
    if allowed is not None:
        trie = label_trie(allowed)
        options["prefix_allowed_tokens_fn"] = lambda _row, ids: trie.get(
            tuple(ids[len(prompt) :].tolist()), stops
        )
    out = model.generate(
        input_ids=torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stops,
        pad_token_id=pad_token_id(tokenizer),
        **options,
    )
    tokens = out[0, len(prompt) :].tolist()
    stop_at = next((k for k, t in enumerate(tokens) if t in stops), None)
    answer = tokens if stop_at is None else tokens[:stop_at]
    return tokenizer.decode(answer, skip_special_tokens=True).strip(), stop_at is not None


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir))


@pytest.mark.parametrize("shots", [False, True], ids=["no-shared-prefix", "shared-prefix"])
@pytest.mark.parametrize("constrained", [False, True], ids=["free", "labels"])
def test_generate_equals_plain_generate_token_for_token(loaded, shots, constrained):
    """Greedy answers of `generate` (batched, prefix kept once, preallocated row cache) equal
    transformers' generate on each prompt alone, for prompts of different lengths."""
    model, tokenizer = loaded.model, loaded.tokenizer
    assert row_caches_fit(model)
    chat = ChatTokenizer(tokenizer, SYSTEM, 128)
    example = (Message("user", "I lost my card."), Message("assistant", "lost_or_stolen_card"))
    if shots:
        prompts = [chat.encode_prompt((*example, Message("user", q))) for q in QUESTIONS]
    else:  # raw text, no chat template: the prompts share no start
        prompts = [tokenizer(q)["input_ids"] for q in QUESTIONS]
    assert len({len(p) for p in prompts}) >= 5
    shared = shared_prefix_length(prompts)
    assert (shared >= MIN_SHARED_PREFIX_TOKENS) == shots
    from tunewright.evaluate.runner import label_token_ids

    allowed = [label_token_ids(chat, label) for label in LABELS] if constrained else None
    expected = [_plain(model, tokenizer, p, 10, allowed) for p in prompts]
    for batch_size in (3, len(prompts)):
        got = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=10,
            batch_size=batch_size,
            allowed_sequences=allowed,
        )
        assert [(g.text, g.stopped) for g in got] == expected
    if constrained:
        assert all(text in LABELS for text, _ in expected)
    assert model.config._attn_implementation == "sdpa", "the attention is put back"


def test_sampling_runs_through_the_cascade(loaded):
    chat = ChatTokenizer(loaded.tokenizer, SYSTEM, 128)
    prompts = [chat.encode_prompt((Message("user", q),)) for q in QUESTIONS]
    torch.manual_seed(0)
    got = generate(
        loaded.model, loaded.tokenizer, prompts, max_new_tokens=8, batch_size=4, do_sample=True
    )
    assert len(got) == len(prompts) and all(0 < g.new_tokens <= 8 for g in got)


def test_prefix_of_keeps_one_copy(loaded):
    cache = DynamicCache(config=loaded.model.config)
    loaded.model(input_ids=torch.tensor([[5, 6, 7, 8]]), cache=cache, use_cache=True)
    prefix = prefix_of(cache)
    assert prefix.length == 4 and prefix.keys[0].dim() == 3


def test_models_we_do_not_reproduce_keep_transformers_path(loaded, monkeypatch):
    """An attention implementation outside CASCADE_REPLACES (or a cache that is not plain KV):
    no row cache, no prefix sharing, transformers' own attention; same answers."""
    from tunewright.inference import generate as generate_module

    def refuse(*args):
        raise AssertionError("cascade used for a model it does not reproduce")

    monkeypatch.setattr(generate_module, "CASCADE_REPLACES", ())
    monkeypatch.setattr(generate_module, "cascade", refuse)
    assert not row_caches_fit(loaded.model)
    chat = ChatTokenizer(loaded.tokenizer, SYSTEM, 128)
    prompts = [chat.encode_prompt((Message("user", q),)) for q in QUESTIONS]
    expected = [_plain(loaded.model, loaded.tokenizer, p, 6) for p in prompts]
    got = generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=6, batch_size=4)
    assert [(g.text, g.stopped) for g in got] == expected
