"""Tests for tunewright.data.dedup: normalisation, exact and near duplicates, clusters."""

import random

import numpy as np
import pytest
from datasketch import MinHash
from hypothesis import given, settings
from hypothesis import strategies as st

from tunewright.data import dedup
from tunewright.data.dedup import (
    Deduplicator,
    lsh_bands,
    minhash_signatures,
    normalize_for_hash,
    token_hashes,
)

WORDS = [
    "account",
    "balance",
    "transfer",
    "card",
    "payment",
    "refund",
    "pending",
    "declined",
    "limit",
    "fee",
    "exchange",
    "rate",
    "branch",
    "mobile",
    "app",
    "password",
    "verify",
    "identity",
    "statement",
    "deposit",
    "withdraw",
    "cash",
    "machine",
    "abroad",
    "currency",
    "salary",
    "loan",
    "interest",
    "mortgage",
    "savings",
    "charge",
    "dispute",
    "merchant",
    "receipt",
    "online",
    "contactless",
    "travel",
    "notify",
    "fraud",
    "freeze",
    "unlock",
    "replace",
    "delivery",
    "address",
    "phone",
    "email",
]


def sentence(rng: random.Random, n_words: int = 20) -> str:
    """n distinct words, so one replaced word gives Jaccard (n - 1) / (n + 1)."""
    return " ".join(rng.sample(WORDS, n_words)).capitalize() + "."


def one_word_changed(rng: random.Random, text: str) -> str:
    words = text.rstrip(".").split()
    position = rng.randrange(1, len(words))
    words[position] = rng.choice([w for w in WORDS if w not in words])
    return " ".join(words) + "."


def reference_token_hash(word: bytes) -> int:
    """The token hash of `token_hashes`, one word at a time in plain Python."""
    value = sum(byte * pow(dedup._POLY_BASE, i, 1 << 64) for i, byte in enumerate(word))
    return ((value * dedup._TOP_MIX) % (1 << 64)) >> 32


def test_normalize_folds_case_width_spacing_and_edge_punctuation() -> None:
    assert normalize_for_hash("  Hello,\tWORLD!!  ") == "hello, world"
    assert normalize_for_hash("ＨＥＬＬＯ ﬁne") == "hello fine"  # full-width and ligature
    assert normalize_for_hash("¿Qué tal?") == "qué tal"
    assert normalize_for_hash("$100 +fee") == "$100 +fee"  # symbols carry meaning: kept


def test_token_hashes_match_the_reference_and_ignore_position() -> None:
    hashes, counts = token_hashes(["the card, the fee", "", "fee"])
    assert counts.tolist() == [4, 0, 1]
    expected = [reference_token_hash(w) for w in (b"the", b"card", b"the", b"fee", b"fee")]
    assert hashes.tolist() == expected


def test_signatures_are_datasketch_minhash_of_the_same_tokens() -> None:
    texts = ["my card payment was declined abroad", "refund pending", "fee"]
    hashes, counts = token_hashes(texts)
    permutations = MinHash(num_perm=64, seed=7, scheme="affine32").permutations
    signatures = minhash_signatures(hashes, counts, permutations)
    for text, signature in zip(texts, signatures, strict=True):
        reference = MinHash(num_perm=64, seed=7, hashfunc=reference_token_hash)
        reference.update_batch(word.encode() for word in text.split())
        assert np.array_equal(signature, reference.hashvalues)


def test_lsh_bands_find_pairs_at_the_threshold() -> None:
    for threshold in (0.5, 0.8, 0.9):
        bands, rows = lsh_bands(threshold, 64)
        assert bands * rows <= 64
        assert 1 - (1 - threshold**rows) ** bands >= 0.99


def test_exact_duplicates_differing_in_case_and_spacing_are_caught() -> None:
    dedup_ = Deduplicator()
    assert dedup_.add("a", "How do I reset my PIN?").keep
    decision = dedup_.add("b", "  how do i   RESET my pin ")
    assert (decision.kind, decision.duplicate_of, decision.jaccard) == ("exact", "a", 1.0)


def test_one_word_changed_in_a_20_word_sentence_is_a_near_duplicate() -> None:
    rng = random.Random(0)
    dedup_ = Deduplicator(threshold=0.8)
    originals = [sentence(rng) for _ in range(10)]
    for i, text in enumerate(originals):
        assert dedup_.add(f"orig{i}", text).keep
    for i, text in enumerate(originals):
        decision = dedup_.add(f"edit{i}", one_word_changed(rng, text))
        assert decision.kind == "near"
        assert decision.duplicate_of == f"orig{i}"
        assert decision.jaccard is not None and decision.jaccard >= 0.8


def test_unrelated_texts_are_kept() -> None:
    rng = random.Random(1)
    vocabulary = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=6)) for _ in range(2000)]
    texts = [" ".join(rng.sample(vocabulary, rng.randint(5, 20))) for _ in range(500)]
    dedup_ = Deduplicator()
    assert all(decision.keep for decision in dedup_.add_many(enumerate(texts)))
    assert dedup_.clusters() == []


def test_first_occurrence_wins_and_clusters_group_duplicates_in_order() -> None:
    rng = random.Random(2)
    base, other = sentence(rng), sentence(rng)
    near = one_word_changed(rng, base)
    rows = [
        (1, base),
        (2, other),
        (3, base.upper()),  # exact of 1
        (4, near),  # near of 1
        (5, near.lower() + "!!"),  # exact of 4, so in 1's cluster
        (6, "something else entirely"),
    ]
    dedup_ = Deduplicator()
    decisions = [dedup_.add(key, text) for key, text in rows]
    assert [(d.kind, d.duplicate_of) for d in decisions] == [
        ("keep", None),
        ("keep", None),
        ("exact", 1),
        ("near", 1),
        ("exact", 4),
        ("keep", None),
    ]
    assert dedup_.clusters() == [[1, 3, 4, 5]]


def test_punctuation_only_and_empty_texts_are_exact_deduplicated_only() -> None:
    dedup_ = Deduplicator()
    assert [d.kind for d in dedup_.add_many(enumerate(["!!!", "", "?", "ok"]))] == [
        "keep",
        "exact",
        "exact",
        "keep",
    ]


def test_near_duplicates_are_found_after_the_index_grows() -> None:
    rng = random.Random(3)
    texts = [" ".join(rng.choices(WORDS, k=12)) + f" {i}" for i in range(6000)]
    dedup_ = Deduplicator()
    assert all(d.keep for d in dedup_.add_many(enumerate(texts)))
    # 6000 kept rows x 12 bands outgrow the table's first sizes several times.
    late = list(dedup_.add_many((f"dup{i}", texts[i] + " extra") for i in range(0, 6000, 500)))
    assert [d.duplicate_of for d in late] == list(range(0, 6000, 500))


@pytest.mark.parametrize("chunk_rows", [7, 1024])
def test_add_many_decides_like_add_row_by_row(
    monkeypatch: pytest.MonkeyPatch, chunk_rows: int
) -> None:
    monkeypatch.setattr(dedup, "_CHUNK_ROWS", chunk_rows)
    rng = random.Random(4)
    texts: list[str] = []
    for _ in range(400):
        roll = rng.random()
        if texts and roll < 0.15:
            texts.append(rng.choice(texts).upper())
        elif texts and roll < 0.4:
            texts.append(one_word_changed(rng, rng.choice(texts)))
        else:
            texts.append(sentence(rng, rng.randint(8, 20)))
    one_by_one = Deduplicator()
    expected = [one_by_one.add(i, text) for i, text in enumerate(texts)]
    chunked = Deduplicator()
    assert list(chunked.add_many(enumerate(texts))) == expected
    assert chunked.clusters() == one_by_one.clusters()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.sampled_from(WORDS[:8]), min_size=1, max_size=6), max_size=25))
def test_add_many_equals_add_on_arbitrary_rows(word_lists: list[list[str]]) -> None:
    texts = [" ".join(words) for words in word_lists]
    one_by_one = Deduplicator()
    expected = [one_by_one.add(i, text) for i, text in enumerate(texts)]
    assert list(Deduplicator().add_many(enumerate(texts))) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"num_perm": 1}, "num_perm"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Deduplicator(**kwargs)


def test_permutations_are_datasketch_affine32_ones() -> None:
    for num_perm, seed in [(64, 1), (128, 7)]:
        expected = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        assert np.array_equal(dedup.affine32_permutations(num_perm, seed), expected)


def test_digests_that_share_their_first_half_stay_distinct() -> None:
    # The exact-duplicate table files the first 8 bytes of a digest; a clash goes to a dict.
    def sketches(*digests: bytes) -> dedup.Sketches:
        n = len(digests)
        return dedup.Sketches(b"".join(digests), np.zeros((n, 64), np.uint16), np.zeros(n, bool))

    a, b, c, d = (bytes(8) + bytes([k]) * 8 for k in (1, 2, 3, 4))
    other = b"\x01" * 16
    dedup_ = Deduplicator()
    first = dedup_.add_sketched([0, 1, 2, 3, 4], sketches(a, b, a, other, b))
    assert [x.kind for x in first] == ["keep", "keep", "exact", "keep", "exact"]
    assert (first[2].duplicate_of, first[4].duplicate_of) == (0, 1)
    again = dedup_.add_sketched([5, 6, 7, 8], sketches(c, b, a, c))
    assert [(x.kind, x.duplicate_of) for x in again] == [
        ("keep", None),
        ("exact", 1),
        ("exact", 0),
        ("exact", 5),
    ]
    assert dedup_.add_sketched([9], sketches(d))[0].keep
