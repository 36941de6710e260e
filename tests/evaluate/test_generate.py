"""Batched generation must give exactly what one-prompt-at-a-time generation gives (greedy)."""

from tunewright.data.example import Message
from tunewright.data.tokenize import ChatTokenizer
from tunewright.evaluate.generate import generate
from tunewright.models import load_model


def test_batched_equals_one_at_a_time(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    chat = ChatTokenizer(loaded.tokenizer, None, 64)
    questions = ["I lost my card.", "Where is my new card?", "hi", "What is the exchange rate today? Tell me."]
    prompts = [chat.encode_prompt((Message("user", q),)) for q in questions]
    one = [generate(loaded.model, loaded.tokenizer, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    batched = generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=12, batch_size=4)
    assert [g.text for g in batched] == [g.text for g in one]
    assert all(g.new_tokens <= 12 for g in batched)
    assert all(g.stopped == (g.new_tokens < 12 or g.stopped) for g in batched)


def test_constrained_decoding_only_produces_labels(tiny_model_dir):
    from tunewright.evaluate.runner import label_token_ids

    loaded = load_model(str(tiny_model_dir))
    chat = ChatTokenizer(loaded.tokenizer, None, 64)
    labels = ["card_arrival", "lost_or_stolen_card", "exchange_rate"]
    allowed = [label_token_ids(chat, label) for label in labels]
    assert all(seq[-1] == loaded.tokenizer.eos_token_id for seq in allowed)
    prompts = [chat.encode_prompt((Message("user", q),)) for q in ["I lost my card.", "hi", "rate?"]]
    free = generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=20, batch_size=3)
    constrained = generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=20, batch_size=3,
                           allowed_sequences=allowed)
    assert not any(g.text in labels for g in free), "the untrained tiny model should not name labels by itself"
    assert all(g.text in labels and g.stopped for g in constrained)
