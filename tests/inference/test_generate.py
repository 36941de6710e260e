"""Batched generation must give exactly what one-prompt-at-a-time generation gives (greedy)."""

from tunewright.dataset.example import Message
from tunewright.dataset.tokenize import ChatTokenizer
from tunewright.inference.generate import MIN_SHARED_PREFIX_TOKENS, generate, shared_prefix_length
from tunewright.models import load_model


def test_batched_equals_one_at_a_time(tiny_model_dir):
    """Greedy decoding with left padding must not change a single token: pad positions are masked
    and position ids start at each prompt's first real token."""
    loaded = load_model(str(tiny_model_dir))
    chat = ChatTokenizer(loaded.tokenizer, None, 64)
    questions = [
        "I lost my card.",
        "Where is my new card?",
        "hi",
        "What is the exchange rate today? Tell me.",
        "card",
        "Hi, my wallet with the card was stolen. What now?",
        "rate?",
        "How long until it arrives?",
        "Why was I charged a fee for taking out cash in another currency abroad last week?",
    ]
    prompts = [chat.encode_prompt((Message("user", q),)) for q in questions]
    assert len({len(p) for p in prompts}) >= 6, (
        "prompts of different lengths, so batches need padding"
    )
    one = [
        generate(loaded.model, loaded.tokenizer, [p], max_new_tokens=16, batch_size=1)[0]
        for p in prompts
    ]
    for batch_size in (4, 9):  # uneven last batch, and everything in one batch
        batched = generate(
            loaded.model, loaded.tokenizer, prompts, max_new_tokens=16, batch_size=batch_size
        )
        assert [(g.text, g.new_tokens, g.stopped) for g in batched] == [
            (g.text, g.new_tokens, g.stopped) for g in one
        ]
    assert all(g.new_tokens <= 16 for g in one)
    assert all(g.stopped or g.new_tokens == 16 for g in one)


def test_constrained_decoding_only_produces_labels(tiny_model_dir):
    from tunewright.evaluate.runner import label_token_ids

    loaded = load_model(str(tiny_model_dir))
    chat = ChatTokenizer(loaded.tokenizer, None, 64)
    labels = ["card_arrival", "lost_or_stolen_card", "exchange_rate"]
    allowed = [label_token_ids(chat, label) for label in labels]
    assert all(seq[-1] == loaded.tokenizer.eos_token_id for seq in allowed)
    prompts = [
        chat.encode_prompt((Message("user", q),)) for q in ["I lost my card.", "hi", "rate?"]
    ]
    free = generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=20, batch_size=3)
    constrained = generate(
        loaded.model,
        loaded.tokenizer,
        prompts,
        max_new_tokens=20,
        batch_size=3,
        allowed_sequences=allowed,
    )
    assert not any(g.text in labels for g in free), (
        "the untrained tiny model should not name labels by itself"
    )
    assert all(g.text in labels and g.stopped for g in constrained)


def test_shared_prefix_length_leaves_a_token_to_prefill():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4, 6]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert shared_prefix_length([[7, 1], [8, 1]]) == 0


def test_a_shared_prefix_is_cached_once_and_changes_nothing(tiny_model_dir):
    """The fair base's long instruction + label list + shots is computed once and reused by every
    batch (prefix, pads, question); answers must equal one-prompt-at-a-time generation."""
    loaded = load_model(str(tiny_model_dir))
    system = "Name the intent. Answer with exactly one of: card_arrival, exchange_rate, lost_or_stolen_card"
    chat = ChatTokenizer(loaded.tokenizer, system, 64)
    shots = (Message("user", "I lost my card."), Message("assistant", "lost_or_stolen_card"))
    questions = [
        "Where is my new card?",
        "hi",
        "What is the exchange rate today? Tell me.",
        "card",
        "rate?",
    ]
    prompts = [chat.encode_prompt((*shots, Message("user", q))) for q in questions]
    assert shared_prefix_length(prompts) >= MIN_SHARED_PREFIX_TOKENS
    one = [
        generate(loaded.model, loaded.tokenizer, [p], max_new_tokens=12, batch_size=1)[0]
        for p in prompts
    ]
    for batch_size in (2, 5):
        batched = generate(
            loaded.model, loaded.tokenizer, prompts, max_new_tokens=12, batch_size=batch_size
        )
        assert [(g.text, g.new_tokens, g.stopped) for g in batched] == [
            (g.text, g.new_tokens, g.stopped) for g in one
        ]
