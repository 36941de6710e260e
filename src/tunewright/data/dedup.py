"""Exact and near-duplicate detection for streams of short texts.

Exact duplicates are found by a 128-bit blake2b digest of `normalize_for_hash(text)`.
Near duplicates are found with MinHash signatures banded into an LSH index, then confirmed by the
signatures' estimated Jaccard similarity. The first occurrence of a text always wins.

Shingles are the *words* of the normalised text (punctuation split off), as a set. We measured
the alternatives on Banking77 + Twitter financial news rows of 15-25 words with one word replaced:
the share of pairs whose true Jaccard stays >= 0.8 was 100% for word sets, 88% for character
5-grams, 49% for word 2-grams and 14% for word 3-grams. Word 3-grams suit long documents, but on
a 20-word chat row one changed word already removes 3 of 18 shingles. The price of word sets is
that word order is ignored and that scripts written without spaces form one "word" per run.

Signatures are bit-identical to `datasketch.MinHash(scheme="affine32")` fed the same token
hashes (the tests check this), but are computed for a chunk of rows in a few numpy operations,
and the LSH buckets are a numpy hash table probed for the whole chunk at once. datasketch's
per-row `MinHash` + `MinHashLSH.query/insert` path measured ~15x slower (~250 us a row) and
~3.5 KB a row (one Python set per bucket); see benchmarks/dedup_speed.py. Exact digests live in
the same kind of table, so deciding a chunk costs a few numpy calls, not a dict lookup a row.

Work is split in two so that the per-row part can run in worker processes: `sketch` (normalise,
digest, MinHash; depends only on the texts) and `add_sketched` (the decisions, in order, against
everything seen before).
"""

from __future__ import annotations

import hashlib
import string
import unicodedata
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from itertools import islice
from typing import Generic, Literal, TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)

# Characters stripped from both ends before hashing: Unicode punctuation (category P*) that
# trails or leads chat text, not symbols such as "$" or "+" that carry meaning.
_EDGE_PUNCTUATION = (
    "".join(c for c in string.punctuation if unicodedata.category(c).startswith("P"))
    + "¡¿…«»‘’“”„‚–—"
    + " "
)
# Inside the text every ASCII punctuation mark or symbol separates words.
_TO_SPACE = bytes.maketrans(string.punctuation.encode(), b" " * len(string.punctuation))
_ROW_SEPARATOR = 10  # b"\n": normalised text has no newlines, so it can join rows

# Polynomial token hash: any odd multiplier is invertible mod 2^64, which lets us hash every
# token of a chunk from one prefix sum. The final odd multiplier mixes all 64 bits into the
# top 32 that we keep (the low bits of a polynomial hash only see the low bits of the input).
_POLY_BASE = 0x9E3779B97F4A7C15
_POLY_BASE_INV = pow(_POLY_BASE, -1, 1 << 64)
_TOP_MIX = 0xD6E8FEB86659FD93

# Chunks bound the (tokens x num_perm) matrix: <= 512 KiB of text is <= 256k tokens (64 MiB at
# 64 permutations); larger chunks pay numpy's per-call overhead less often.
_CHUNK_ROWS = 8192
_CHUNK_CHARS = 1 << 19
_CACHED_POWERS = 1 << 20  # bytes; a single longer text gets its power tables computed afresh
# Linear probing in the LSH table never wraps around: this many slots past the last home slot
# take the overflow, and the table grows early in the rare case they fill up.
_PROBE_TAIL = 64
# LSH band layout is chosen so that a pair exactly at the threshold becomes a candidate with
# at least this probability; candidates are then confirmed by the Jaccard estimate.
_CANDIDATE_RECALL = 0.99


def normalize_for_hash(text: str) -> str:
    """Return the canonical form that exact deduplication hashes.

    NFKC (full-width and ligature forms fold to plain ones), casefold, whitespace runs collapsed
    to one space, and punctuation stripped from both ends.
    """
    if text.isascii():
        text = text.lower()  # NFKC leaves ASCII as is, and casefold() is lower() on it
    else:
        text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(text.split()).strip(_EDGE_PUNCTUATION)


def text_digest(normalized: str) -> bytes:
    """128-bit blake2b digest of an already normalised text: the exact-duplicate identity."""
    return hashlib.blake2b(normalized.encode(), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class DedupDecision(Generic[K]):
    """What `Deduplicator.add` decided for one row."""

    kind: Literal["keep", "exact", "near"]
    # exact: the first row with the same normalised text; near: the most similar kept row
    duplicate_of: K | None = None
    jaccard: float | None = None  # 1.0 for exact, the MinHash estimate for near

    @property
    def keep(self) -> bool:
        return self.kind == "keep"


_KEEP: DedupDecision = DedupDecision("keep")


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """Pick (bands, rows_per_band) for LSH with `num_perm` permutations.

    Takes the most rows per band (fewest spurious candidates) for which a pair with Jaccard
    equal to `threshold` still shares at least one band with probability >= 0.99. datasketch's
    own optimiser weighs false positives and negatives equally and, at threshold 0.8 with 64
    permutations, picks (5, 11), which finds only 36% of pairs at exactly 0.8.
    """
    for rows_per_band in range(num_perm, 0, -1):
        bands = num_perm // rows_per_band
        if 1 - (1 - threshold**rows_per_band) ** bands >= _CANDIDATE_RECALL:
            return bands, rows_per_band
    return num_perm, 1


def token_hashes(normalized_texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Hash every word of every text in one pass.

    Returns `(hashes, tokens_per_text)`: uint32 hashes of all words in order, and how many
    belong to each text. Words are maximal runs of bytes that are neither ASCII whitespace nor
    ASCII punctuation in the UTF-8 encoding. Texts must not contain newlines (normalised text
    never does).
    """
    data = np.frombuffer("\n".join(normalized_texts).encode().translate(_TO_SPACE), np.uint8)
    in_word = np.zeros(len(data) + 2, np.int8)  # padded so words at either end have both edges
    in_word[1:-1] = (data != ord(" ")) & (data != _ROW_SEPARATOR)
    edges = in_word[1:] - in_word[:-1]
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    # hash(word) = sum(byte_i * BASE^i) over the word = (prefix[end] - prefix[start]) / BASE^start
    powers, inverse_powers = _powers(len(data))
    prefix = np.zeros(len(data) + 1, np.uint64)
    np.cumsum(data * powers, out=prefix[1:])
    words = (prefix[ends] - prefix[starts]) * inverse_powers[starts]
    hashes = ((words * np.uint64(_TOP_MIX)) >> np.uint64(32)).astype(np.uint32)
    row_of_word = np.cumsum(data == _ROW_SEPARATOR)[starts]
    return hashes, np.bincount(row_of_word, minlength=len(normalized_texts))


def _powers(count: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE^i and BASE^-i mod 2^64 for i < count (uint64 products wrap)."""
    size = 1 << max(10, (count - 1).bit_length())  # a few sizes, so the cache stays small
    powers, inverse_powers = (
        _cached_power_tables(size) if size <= _CACHED_POWERS else _power_tables(size)
    )
    return powers[:count], inverse_powers[:count]


@cache
def _cached_power_tables(size: int) -> tuple[np.ndarray, np.ndarray]:
    return _power_tables(size)


def _power_tables(size: int) -> tuple[np.ndarray, np.ndarray]:
    tables = np.full((2, size), [[_POLY_BASE], [_POLY_BASE_INV]], np.uint64)
    tables[:, 0] = 1
    return tuple(np.cumprod(tables, axis=1))  # type: ignore[return-value]


def affine32_permutations(num_perm: int, seed: int) -> np.ndarray:
    """`datasketch.MinHash(num_perm, seed=seed, scheme="affine32").permutations`, made the same
    way (the tests check): importing datasketch pulls in scipy, ~1 s of every run."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return np.array([a, b])


def _fmix32(values: np.ndarray) -> np.ndarray:
    # MurmurHash3's finaliser, as datasketch's affine32 scheme applies before permuting.
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


def minhash_signatures(
    hashes: np.ndarray, tokens_per_text: np.ndarray, permutations: np.ndarray
) -> np.ndarray:
    """MinHash signatures, one row per text, of texts given as consecutive runs of `hashes`.

    `permutations` is datasketch's `MinHash(scheme="affine32").permutations` (a 2 x num_perm
    uint32 array); every text must have at least one token.
    """
    a, b = permutations
    if len(tokens_per_text) == 0:
        return np.empty((0, len(a)), np.uint32)
    # (num_perm, tokens) layout: reduceat then walks contiguous memory, ~5x faster than the
    # transpose. uint32 arithmetic wraps, and mod 2^32 is exactly the affine32 scheme.
    permuted = np.empty((len(a), len(hashes)), np.uint32)
    np.multiply(a[:, None], _fmix32(hashes), out=permuted)
    permuted += b[:, None]
    offsets = np.zeros(len(tokens_per_text), np.intp)
    np.cumsum(tokens_per_text[:-1], out=offsets[1:])
    return np.minimum.reduceat(permuted, offsets, axis=1).T


@dataclass(frozen=True)
class Sketches:
    """Per text: its 16-byte exact-duplicate digest (concatenated), its MinHash signature (low
    16 bits of each value) and whether it has any word (without, only exact duplicates count)."""

    digests: bytes
    signatures: np.ndarray  # (texts, num_perm) uint16
    has_tokens: np.ndarray  # (texts,) bool

    def slice(self, start: int, stop: int) -> Sketches:
        return Sketches(
            self.digests[16 * start : 16 * stop],
            self.signatures[start:stop],
            self.has_tokens[start:stop],
        )


class _BandIndex:
    """LSH buckets: band hash -> text id of the first kept row filed under it.

    An open-addressing hash table (linear probing) in two numpy arrays, so a whole chunk is
    looked up or filed in a few vectorised probe rounds. A dict costs ~100 bytes an entry and an
    interpreter round trip per key; this costs 8 bytes a slot at a load factor of 1/4 to 1/2.
    Text ids are stored as int32, which caps an index at 2^31 distinct texts.
    """

    def __init__(self, dtype: type = np.uint32) -> None:
        self._dtype = dtype  # uint32 band keys, or uint64 (the first half of a text digest)
        self._width = np.uint64(8 * np.dtype(dtype).itemsize)
        self._bits = 16
        self._count = 0
        self._keys = np.zeros(0, dtype)
        self._ids = np.zeros(0, np.int32)  # -1 marks an empty slot
        self._rebuild(np.zeros(0, dtype), np.zeros(0, np.int32))

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Text id filed under each key, or -1; same shape as `keys`."""
        flat = keys.ravel()
        found = np.full(len(flat), -1, np.int64)
        todo = np.arange(len(flat))
        slots = self._home(flat)
        while len(todo):  # probe runs end at an empty slot, and the last slot is always empty
            ids = self._ids[slots]
            occupied = ids >= 0
            hit = occupied & (self._keys[slots] == flat[todo])
            found[todo[hit]] = ids[hit]
            more = occupied & ~hit
            todo, slots = todo[more], slots[more] + 1
        return found.reshape(keys.shape)

    def insert(self, keys: np.ndarray, text_ids: np.ndarray) -> None:
        """File distinct keys that `lookup` did not find."""
        if 2 * (self._count + len(keys)) > 1 << self._bits:
            self._grow(keys, text_ids)
            return
        todo = np.arange(len(keys))
        slots = self._home(keys)
        while len(todo):
            if slots.max() >= len(self._keys) - 1:  # a probe run reached the end: rare
                self._grow(keys[todo], text_ids[todo])
                return
            free = self._ids[slots] < 0
            # Keys racing for one free slot all write it; the last write wins, the rest probe on.
            self._keys[slots[free]] = keys[todo[free]]
            won = free.copy()
            won[free] = self._keys[slots[free]] == keys[todo[free]]
            self._ids[slots[won]] = text_ids[todo[won]]
            self._count += int(np.count_nonzero(won))
            todo, slots = todo[~won], slots[~won] + 1

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return (keys >> self._dtype(self._width - np.uint64(self._bits))).astype(np.intp)

    def _grow(self, keys: np.ndarray, text_ids: np.ndarray) -> None:
        occupied = self._ids >= 0
        keys = np.concatenate([self._keys[occupied], keys])
        text_ids = np.concatenate([self._ids[occupied], text_ids.astype(np.int32)])
        self._keys, self._ids = keys[:0], self._ids[:0]  # free the old table before the new one
        while 2 * len(keys) > 1 << self._bits:
            self._bits += 1
        self._rebuild(keys, text_ids)

    def _rebuild(self, keys: np.ndarray, text_ids: np.ndarray) -> None:
        """Lay out all entries at once: by home slot, each takes max(home, previous slot + 1)."""
        order = np.argsort(keys)  # homes are the top bits, so this orders them for any size
        keys, text_ids = keys[order], text_ids[order]
        del order  # the big temporaries are freed or updated in place: this runs at peak memory
        steps = np.arange(len(keys))
        while True:
            slots = self._home(keys)
            slots -= steps
            np.maximum.accumulate(slots, out=slots)
            slots += steps
            size = (1 << self._bits) + _PROBE_TAIL
            if len(slots) == 0 or slots[-1] < size - 1:
                break
            self._bits += 1
        self._keys = np.zeros(size, self._dtype)
        self._ids = np.full(size, -1, np.int32)
        self._keys[slots] = keys
        self._ids[slots] = text_ids
        self._count = len(keys)


def _first_of_repeats(keys: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence of each value of the 1-d `keys`."""
    first = np.zeros(len(keys), bool)
    first[np.unique(keys, return_index=True)[1]] = True
    return first


def _repeated(keys: np.ndarray) -> np.ndarray:
    """Mask of the entries of `keys` whose value occurs more than once in it."""
    flat = keys.ravel()
    order = np.argsort(flat)
    same_as_next = flat[order][1:] == flat[order][:-1]
    repeated_sorted = np.zeros(len(flat), bool)
    repeated_sorted[1:] |= same_as_next
    repeated_sorted[:-1] |= same_as_next
    repeated = np.empty(len(flat), bool)
    repeated[order] = repeated_sorted
    return repeated.reshape(keys.shape)


class Deduplicator(Generic[K]):
    """Streaming exact + near-duplicate filter; the first occurrence of a text wins.

    Memory holds, per distinct normalised text, its 16-byte digest (in a table with spare room:
    ~40 bytes), its key and its signature (2 bytes x `num_perm`), and per kept text one LSH table
    entry per band (16-32 bytes with the table's spare room): ~0.55 KiB a row at the defaults
    (measured), briefly more while a table doubles. Texts are not kept. Keys must be unique. Use
    `add_many` (or `sketch` + `add_sketched`) for throughput: `add` pays numpy's per-call
    overhead on one row.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 64, seed: int = 1) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"dedup threshold must be in (0, 1], got {threshold!r}")
        if num_perm < 2:
            raise ValueError(f"dedup num_perm must be >= 2, got {num_perm!r}")
        self.threshold = threshold
        self.num_perm = num_perm
        self._permutations = affine32_permutations(num_perm, seed)
        self._bands, self._rows_per_band = lsh_bands(threshold, num_perm)
        # A random odd multiplier per (band, position) gives each band its own hash, so all
        # bands can share one index.
        rng = np.random.default_rng(seed)
        shape = (self._bands, self._rows_per_band)
        self._band_mix = rng.integers(0, 1 << 63, shape, np.uint64) * np.uint64(2) + np.uint64(1)

        # A "text id" numbers distinct normalised texts in order of first appearance.
        # Exact duplicates: the first 8 bytes of each digest in a hash table (-> text id), the
        # other 8 by text id; the rare digests whose first half is already taken go to a dict.
        self._digest_index = _BandIndex(np.uint64)
        self._digest_tail = np.zeros(1024, np.uint64)
        self._digest_overflow: dict[bytes, int] = {}
        self._keys: list[K] = []  # text id -> key of the row that brought it
        self._head: list[int] = []  # text id -> text id of the kept row of its cluster
        # text id -> signature, low 16 bits only (b-bit MinHash): half the memory, and two
        # different values then agree by chance with p = 2^-16, a negligible bias.
        self._signatures = np.empty((1024, num_perm), np.uint16)
        self._index = _BandIndex()
        self._members: dict[int, list[K]] = {}  # kept text id -> keys of its duplicates

    def add(self, key: K, text: str) -> DedupDecision[K]:
        """Decide whether `text` is new, or an exact or near duplicate of an earlier row."""
        return self.add_sketched([key], self.sketch([text]))[0]

    def add_many(self, rows: Iterable[tuple[K, str]]) -> Iterator[DedupDecision[K]]:
        """`add` for each `(key, text)`, lazily and in order; much faster than calling `add`.

        Rows are processed in chunks (so decisions arrive a chunk at a time); the decisions are
        the ones row-by-row `add` calls would give.
        """
        rows = iter(rows)
        while chunk := list(islice(rows, _CHUNK_ROWS)):
            keys = [key for key, _ in chunk]
            yield from self.add_sketched(keys, self.sketch([text for _, text in chunk]))

    def sketch(self, texts: list[str]) -> Sketches:
        """What deduplication needs to know of each text: its digest and MinHash signature.

        Depends only on the texts and the settings (not on rows seen before), so it may be
        computed elsewhere, e.g. in a worker process, by a `Deduplicator` made with the same
        arguments; `add_sketched` then decides.
        """
        normalized = [normalize_for_hash(text) for text in texts]
        digests = b"".join([text_digest(text) for text in normalized])
        signatures = np.zeros((len(texts), self.num_perm), np.uint16)
        has_tokens = np.zeros(len(texts), bool)
        start = 0
        while start < len(texts):
            # Also cut on text volume, so a chunk of long documents stays small in memory.
            sizes = np.cumsum([len(text) for text in normalized[start : start + _CHUNK_ROWS]])
            stop = start + max(1, int(np.searchsorted(sizes, _CHUNK_CHARS)))
            hashes, tokens_per_text = token_hashes(normalized[start:stop])
            tokens = tokens_per_text > 0  # only-punctuation text can only be an exact dup
            has_tokens[start:stop] = tokens
            rows = start + np.flatnonzero(tokens)
            # low 16 bits only (b-bit MinHash): half the memory, and two different values then
            # agree by chance with p = 2^-16, a negligible bias.
            signatures[rows] = minhash_signatures(
                hashes, tokens_per_text[tokens], self._permutations
            )
            start = stop
        return Sketches(digests, signatures, has_tokens)

    def clusters(self) -> list[list[K]]:
        """Groups of rows with duplicates: the kept key first, then its duplicates in order."""
        return [[self._keys[head], *dups] for head, dups in sorted(self._members.items())]

    def add_sketched(self, keys: list[K], sketches: Sketches) -> list[DedupDecision[K]]:
        """Decide rows given their keys and `sketch` (of this or an identical Deduplicator)."""
        decisions: list[DedupDecision[K]] = []
        for start in range(0, len(keys), _CHUNK_ROWS):
            decisions += self._add_chunk(
                keys[start : start + _CHUNK_ROWS], sketches.slice(start, start + _CHUNK_ROWS)
            )
        return decisions

    def _add_chunk(self, keys: list[K], sketches: Sketches) -> list[DedupDecision[K]]:
        # Pass 1, exact: every never-seen normalised text gets the next text id.
        first_new_id = len(self._keys)
        text_of_row = self._exact(sketches.digests)
        candidates = np.flatnonzero(text_of_row >= first_new_id)
        # the first row of each new text (new ids follow first appearance, so these ascend)
        new_rows = candidates[np.unique(text_of_row[candidates], return_index=True)[1]]
        self._keys.extend([keys[row] for row in new_rows.tolist()])
        self._head.extend(range(first_new_id, len(self._keys)))
        is_new = np.zeros(len(keys), bool)
        is_new[new_rows] = True
        duplicates: list[tuple[int, int, bool]] = [  # (row, text id, is exact)
            (row, text_id, True)
            for row, text_id in zip(
                np.flatnonzero(~is_new).tolist(), text_of_row[~is_new].tolist(), strict=True
            )
        ]
        new_rows = new_rows.tolist()

        # Pass 2, near: among the texts never seen before.
        near = {}
        if new_rows:
            near = self._near_duplicates(
                first_new_id, sketches.signatures[new_rows], sketches.has_tokens[new_rows]
            )
        for text_id, (head, _) in near.items():
            self._head[text_id] = head
            duplicates.append((new_rows[text_id - first_new_id], text_id, False))

        # Pass 3: decisions and cluster membership of the duplicates, in row order.
        decisions: list[DedupDecision[K]] = [_KEEP] * len(keys)
        for row, text_id, is_exact in sorted(duplicates):
            if is_exact:
                decisions[row] = DedupDecision("exact", self._keys[text_id], 1.0)
            else:
                head, jaccard = near[text_id]
                decisions[row] = DedupDecision("near", self._keys[head], jaccard)
            self._members.setdefault(self._head[text_id], []).append(keys[row])
        return decisions

    def _exact(self, digests: bytes) -> np.ndarray:
        """The text id of each row's digest, numbering new digests in order of first appearance."""
        halves = np.frombuffer(digests, np.uint64).reshape(-1, 2)
        distinct, first_row, inverse = np.unique(
            np.frombuffer(digests, "V16"), return_index=True, return_inverse=True
        )
        del distinct
        order = np.argsort(first_row)  # distinct digests in order of first appearance
        head, tail = halves[first_row[order], 0], halves[first_row[order], 1]
        text_id = self._digest_index.lookup(head)
        filed = text_id >= 0
        # A filed first half with another second half: a different text (or one in the dict).
        clash = np.flatnonzero(filed)[self._digest_tail[text_id[filed]] != tail[filed]]
        text_id[clash] = -1
        overflow = np.zeros(len(head), bool)
        overflow[clash] = True
        overflow |= (text_id < 0) & _repeated(head) & ~_first_of_repeats(head)
        raw = np.frombuffer(digests, "V16")
        for k in np.flatnonzero(overflow).tolist():  # rare: ~n^2 / 2^64 of them
            text_id[k] = self._digest_overflow.get(raw[first_row[order[k]]].tobytes(), -1)
        new = np.flatnonzero(text_id < 0)
        first_new = len(self._keys)
        text_id[new] = first_new + np.arange(len(new))
        indexed = new[~overflow[new]]
        self._digest_index.insert(head[indexed], text_id[indexed])
        for k in new[overflow[new]].tolist():
            self._digest_overflow[raw[first_row[order[k]]].tobytes()] = int(text_id[k])
        needed = first_new + len(new)
        if needed > len(self._digest_tail):
            grown = np.zeros(max(2 * len(self._digest_tail), needed), np.uint64)
            grown[: len(self._digest_tail)] = self._digest_tail
            self._digest_tail = grown
        self._digest_tail[text_id[new]] = tail[new]
        of_distinct = np.empty(len(order), np.int64)
        of_distinct[order] = text_id
        return of_distinct[inverse.ravel()]

    def _near_duplicates(
        self, first_id: int, signatures: np.ndarray, has_tokens: np.ndarray
    ) -> dict[int, tuple[int, float]]:
        """Match new texts (ids `first_id`, `first_id + 1`, ...) against kept ones; index the new
        kept ones. Returns {text id: (kept text id, estimated Jaccard)} for the near duplicates.
        """
        ids = first_id + np.flatnonzero(has_tokens)
        signatures = signatures[has_tokens]
        self._store_signatures(ids, signatures)
        band_keys = self._band_keys(signatures)
        filed = self._index.lookup(band_keys)
        # Rows kept in earlier chunks: the best candidate of every row, all at once.
        best_id, best_agreeing = self._best_filed(ids, filed)
        # Rows of this chunk: a key missing from the index but shared by rows of the chunk is
        # filed under the first of them that is kept, as row-by-row `add` calls would do. Such
        # rows are few, and are settled one by one, in order.
        shared = _repeated(band_keys) & (filed < 0)
        chunk_buckets: dict[int, int] = {}
        for row in np.flatnonzero(shared.any(axis=1)).tolist():
            text_id = int(ids[row])
            shared_keys = band_keys[row][shared[row]].tolist()
            earlier = sorted({chunk_buckets[k] for k in shared_keys if k in chunk_buckets})
            if earlier:
                agreeing = np.count_nonzero(
                    self._signatures[earlier] == self._signatures[text_id], axis=1
                )
                best = int(np.argmax(agreeing))  # first maximum: the earliest row
                if agreeing[best] > best_agreeing[row]:  # a tie goes to the (earlier) filed row
                    best_id[row], best_agreeing[row] = earlier[best], agreeing[best]
            if best_agreeing[row] / self.num_perm < self.threshold:
                for band_key in shared_keys:
                    chunk_buckets.setdefault(band_key, text_id)
        jaccard = best_agreeing / self.num_perm
        is_near = jaccard >= self.threshold
        # File the kept rows' new keys: those of one row only, and the shared ones' first owners.
        new_keys = (~is_near)[:, None] & (filed < 0) & ~shared
        owners = np.broadcast_to(ids[:, None], new_keys.shape)[new_keys]
        self._index.insert(
            np.concatenate([band_keys[new_keys], np.fromiter(chunk_buckets, np.uint32)]),
            np.concatenate([owners, np.fromiter(chunk_buckets.values(), np.int64)]),
        )
        matches = zip(best_id[is_near].tolist(), jaccard[is_near].tolist(), strict=True)
        return dict(zip(ids[is_near].tolist(), matches, strict=True))

    def _best_filed(self, ids: np.ndarray, filed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row, the filed candidate whose signature agrees most (earliest on ties), and the
        number of agreeing values; -1 and -1 for rows without candidates."""
        best_id = np.full(len(ids), -1, np.int64)
        best_agreeing = np.full(len(ids), -1, np.int64)
        rows, bands = np.nonzero(filed >= 0)
        if len(rows) == 0:
            return best_id, best_agreeing
        # Each (row, candidate) pair once, as one int64: a candidate found by several bands.
        pairs = np.unique((rows.astype(np.int64) << 32) | filed[rows, bands])
        rows, candidates = pairs >> 32, pairs & 0xFFFFFFFF
        agreeing = np.count_nonzero(
            self._signatures[candidates] == self._signatures[ids[rows]], axis=1
        )
        order = np.lexsort((candidates, -agreeing, rows))  # by row, most agreeing, earliest
        rows, candidates, agreeing = rows[order], candidates[order], agreeing[order]
        first = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
        best_id[rows[first]] = candidates[first]
        best_agreeing[rows[first]] = agreeing[first]
        return best_id, best_agreeing

    def _store_signatures(self, text_ids: np.ndarray, signatures: np.ndarray) -> None:
        capacity = len(self._signatures)
        if len(self._keys) > capacity:
            grown = np.empty((max(2 * capacity, len(self._keys)), self.num_perm), np.uint16)
            grown[:capacity] = self._signatures
            self._signatures = grown
        self._signatures[text_ids] = signatures

    def _band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """One 32-bit hash per LSH band per signature: shape (texts, bands).

        Two different bands then share a key with p = 2^-32: that only adds a candidate, which
        the Jaccard check rejects, and it halves the index.
        """
        banded = signatures[:, : self._bands * self._rows_per_band].astype(
            np.uint64
        )  # 16-bit values
        banded = banded.reshape(len(signatures), self._bands, self._rows_per_band)
        mixed = (banded * self._band_mix).sum(axis=2, dtype=np.uint64)
        return (mixed >> np.uint64(32)).astype(np.uint32)
