"""Classic classifiers scored beside the LLM variants: is a fine-tuned LLM worth it here?

Before fine-tuning a language model to pick one of a few labels, a careful engineer tries a
classifier that trains in seconds on a CPU. Each one here learns from the train split (the user
text of each example -> its label) and predicts a label for every test example; the runner scores
those predictions exactly as it scores the LLMs' answers and compares them with the tuned model.

- `tfidf_logreg`: TF-IDF of word 1-2 grams and character 2-5 grams (within word boundaries, which
  catches typos and inflections) + multinomial logistic regression.
- `embed_logreg`: the base model as a frozen encoder: its last layer's hidden states, averaged
  over the tokens of the user text alone (no chat template, no system prompt: those are the same
  for every example and would only dilute the mean), + logistic regression on the standardised
  vectors. At most `evaluate.embed_max_train_examples` train examples are embedded (a seeded
  sample), since each costs a forward pass of the base model.

Every classifier has the signature `(data: BaselineData) -> list[str]`; `run_baseline` times one
by wall clock (`time.perf_counter`) and by CPU time of the whole process (`time.process_time`,
every thread counted), covering fit and predict and, for embed_logreg, the embedding passes, but
not loading the base model.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tunewright.dataset.example import Example
from tunewright.models import LoadedModel

BASELINES = ("tfidf_logreg", "embed_logreg")


@dataclass(frozen=True)
class BaselineData:
    """What every classifier gets: train texts and labels, test texts, and (embed_logreg) the
    loaded base model with how to batch and truncate its inputs."""

    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    seed: int = 0
    model: LoadedModel | None = None
    batch_size: int = 32
    max_seq_len: int = 512
    max_train_examples: int | None = None


@dataclass(frozen=True)
class BaselineRun:
    """One classifier's test predictions, how long fit + predict took, and what it was."""

    name: str
    description: str
    predictions: list[str]
    seconds: float  # wall clock, time.perf_counter
    cpu_seconds: float  # CPU time of the process, every thread, time.process_time


def user_text(example: Example) -> str:
    """What a classic classifier reads: the example's user turns (system prompt and any earlier
    assistant turns left out, as the classifier has no use for them)."""
    return "\n".join(m.content for m in example.prompt_messages if m.role == "user")


def sample_train(data: BaselineData) -> tuple[list[str], list[str]]:
    """The train texts and labels, or a seeded sample of `max_train_examples` of them."""
    n = len(data.train_texts)
    if data.max_train_examples is None or n <= data.max_train_examples:
        return data.train_texts, data.train_labels
    picked = sorted(random.Random(data.seed).sample(range(n), data.max_train_examples))
    return [data.train_texts[i] for i in picked], [data.train_labels[i] for i in picked]


def _single_label(labels: list[str]) -> str | None:
    # logistic regression needs two classes; with one, that label is the only sensible answer
    return labels[0] if len(set(labels)) == 1 else None


def tfidf_logreg(data: BaselineData) -> list[str]:
    """TF-IDF (word 1-2 grams + char 2-5 grams) + logistic regression, on the whole train split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, make_pipeline

    if (only := _single_label(data.train_labels)) is not None:
        return [only] * len(data.test_texts)
    features = FeatureUnion(
        [
            # single-character words kept: codes and digits ("plan b", "form 3") can matter
            (
                "words",
                TfidfVectorizer(
                    ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b"
                ),
            ),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        ]
    )
    # rows are L2-normalised and sparse: weak regularisation (C=10) suits them; the default C=1
    # underfits small training sets
    classifier = make_pipeline(features, LogisticRegression(C=10.0, max_iter=2000))
    classifier.fit(data.train_texts, data.train_labels)
    return [str(p) for p in classifier.predict(data.test_texts)]


def embed_texts(
    loaded: LoadedModel, texts: Sequence[str], *, batch_size: int, max_seq_len: int
) -> np.ndarray:
    """One fp32 vector per text: the masked mean of the model's last hidden states over the
    text's tokens (at most `max_seq_len`), without a chat template."""
    tokenizer = loaded.tokenizer
    fallback = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids = [
        seq or [fallback]  # an empty text still gets one token, so its mean is defined
        for seq in tokenizer(
            list(texts), add_special_tokens=False, truncation=True, max_length=max_seq_len
        )["input_ids"]
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else fallback
    # the transformer without its head: the vocabulary-sized logits would be computed for nothing
    backbone = loaded.model.base_model
    device = loaded.model.device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # less padding per batch
    vectors: np.ndarray | None = None
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            longest = max(len(ids[i]) for i in chunk)
            input_ids = torch.full((len(chunk), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), longest), dtype=torch.long)
            for row, i in enumerate(chunk):  # right padding keeps real tokens at positions 0..n-1
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            hidden = backbone(
                input_ids=input_ids.to(device), attention_mask=mask.to(device)
            ).last_hidden_state.float()
            weights = mask.to(device).unsqueeze(-1).float()
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
            if vectors is None:
                vectors = np.zeros((len(ids), pooled.shape[-1]), dtype=np.float32)
            vectors[chunk] = pooled.cpu().numpy()
    return vectors if vectors is not None else np.zeros((0, 1), dtype=np.float32)


def embed_logreg(data: BaselineData) -> list[str]:
    """The base model's mean-pooled last hidden states (frozen) + logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if data.model is None:
        raise ValueError("embed_logreg needs the base model (BaselineData.model)")
    texts, labels = sample_train(data)
    if (only := _single_label(labels)) is not None:
        return [only] * len(data.test_texts)

    def embed(batch: list[str]) -> np.ndarray:
        return embed_texts(
            data.model, batch, batch_size=data.batch_size, max_seq_len=data.max_seq_len
        )

    # standardised dense features, a few hundred dimensions, often fewer examples: the default
    # regularisation (C=1) keeps it from fitting noise
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    classifier.fit(embed(texts), labels)
    return [str(p) for p in classifier.predict(embed(data.test_texts))]


CLASSIFIERS: dict[str, Callable[[BaselineData], list[str]]] = {
    "tfidf_logreg": tfidf_logreg,
    "embed_logreg": embed_logreg,
}


def describe(name: str, data: BaselineData) -> str:
    """The one-line description shown in the reports."""
    if name == "tfidf_logreg":
        return (
            f"TF-IDF (word 1-2 + char 2-5 grams) + logistic regression, "
            f"{len(data.train_texts)} train examples"
        )
    used = len(sample_train(data)[0])
    return (
        f"base model's mean last hidden state (frozen) + logistic regression, {used} train examples"
    )


def _import_sklearn() -> None:
    # scikit-learn is imported lazily (commands that never classify do not pay for it) and
    # before the clocks start: a one-off import is not the classifier's cost
    import sklearn.feature_extraction.text  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.pipeline  # noqa: F401
    import sklearn.preprocessing  # noqa: F401


def run_baseline(name: str, data: BaselineData) -> BaselineRun:
    """Fit one classifier and predict the test texts, timed by wall clock and CPU time."""
    _import_sklearn()
    wall, cpu = time.perf_counter(), time.process_time()
    predictions = CLASSIFIERS[name](data)
    return BaselineRun(
        name,
        describe(name, data),
        predictions,
        time.perf_counter() - wall,
        time.process_time() - cpu,
    )
