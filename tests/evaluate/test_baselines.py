"""The classic classifiers of evaluate/baselines.py: they learn a label that words determine, not
one that is random, and embed_logreg runs on the tiny model with one label per test row."""

import random

import numpy as np
import pytest

from tunewright.dataset.example import Example, Message
from tunewright.evaluate.baselines import (
    BaselineData,
    embed_texts,
    run_baseline,
    sample_train,
    user_text,
)
from tunewright.models import load_model

KEYWORDS = {
    "billing": ["invoice", "refund", "charged", "payment"],
    "delivery": ["parcel", "courier", "shipping", "tracking"],
    "account": ["password", "login", "username", "profile"],
}
FILLER = "please help me with my the a an today thanks urgent issue question about".split()


def synthetic(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Texts of filler words plus one keyword that alone decides the label."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.choice(sorted(KEYWORDS))
        words = rng.sample(FILLER, 5)
        words.insert(rng.randrange(6), rng.choice(KEYWORDS[label]))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def _accuracy(predictions: list[str], labels: list[str]) -> float:
    return sum(p == r for p, r in zip(predictions, labels, strict=True)) / len(labels)


def test_tfidf_logreg_learns_words_that_decide_the_label_and_not_shuffled_labels():
    train, labels = synthetic(150, seed=0)
    test, test_labels = synthetic(90, seed=1)
    fitted = run_baseline("tfidf_logreg", BaselineData(train, labels, test))
    assert _accuracy(fitted.predictions, test_labels) >= 0.95
    assert fitted.seconds > 0 and fitted.cpu_seconds > 0
    assert fitted.description.endswith("150 train examples")

    shuffled = random.Random(2).sample(labels, len(labels))  # the words no longer say anything
    control = run_baseline("tfidf_logreg", BaselineData(train, shuffled, test))
    assert _accuracy(control.predictions, test_labels) < 0.7  # chance is 1/3
    assert set(control.predictions) <= set(KEYWORDS)


def test_one_training_label_is_predicted_everywhere():
    fitted = run_baseline("tfidf_logreg", BaselineData(["a b", "c d"], ["x", "x"], ["e", "a"]))
    assert fitted.predictions == ["x", "x"]


def test_user_text_leaves_out_system_and_answer():
    example = Example(
        messages=(
            Message("system", "Route the ticket."),
            Message("user", "my parcel"),
            Message("assistant", "delivery"),
        )
    )
    assert user_text(example) == "my parcel"


def test_train_sample_is_seeded_and_capped():
    texts, labels = synthetic(50, seed=0)
    data = BaselineData(texts, labels, [], seed=3, max_train_examples=20)
    picked, picked_labels = sample_train(data)
    assert len(picked) == 20 and (picked, picked_labels) == sample_train(data)
    assert all(labels[texts.index(t)] == lab for t, lab in zip(picked, picked_labels))
    assert sample_train(BaselineData(texts, labels, [], max_train_examples=None))[0] == texts


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def test_embeddings_are_masked_means_independent_of_batching(tiny):
    texts = ["my card was stolen", "rate", "", "which exchange rate do you use for euros today"]
    together = embed_texts(tiny, texts, batch_size=4, max_seq_len=64)
    alone = np.stack([embed_texts(tiny, [t], batch_size=1, max_seq_len=64)[0] for t in texts])
    assert together.shape == (4, tiny.model.config.hidden_size) and together.dtype == np.float32
    assert np.isfinite(together).all()
    # padding never leaks into a mean: the same text gives the same vector in any batch
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_embed_logreg_runs_on_the_tiny_model(tiny):
    train, labels = synthetic(40, seed=0)
    test, _ = synthetic(12, seed=1)
    data = BaselineData(train, labels, test, model=tiny, batch_size=8, max_train_examples=30)
    fitted = run_baseline("embed_logreg", data)
    assert len(fitted.predictions) == len(test) and set(fitted.predictions) <= set(KEYWORDS)
    assert fitted.description.endswith("30 train examples") and fitted.cpu_seconds > 0
