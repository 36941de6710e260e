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
