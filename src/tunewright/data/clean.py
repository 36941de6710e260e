"""Cleaning: Unicode normalisation, control characters, whitespace, HTML remnants and web addresses.

Each step is chosen in `data.clean`. They are conservative, since a training example's text is
what the model learns to write:
- `unicode`: NFC (composes "e" + combining accent into "é"; unlike NFKC it keeps "²", "ﬁ" and
  full-width forms, which can carry meaning), and drops the BOM and zero-width characters other
  than the joiners that emoji and Indic scripts need.
- `control`: removes C0/C1 control characters except tab and newline; "\\r\\n" and lone "\\r"
  become "\\n".
- `whitespace`: strips trailing spaces from lines, collapses runs of 3+ newlines to one blank
  line and trims the ends. Runs of spaces inside a line are left alone: they are indentation in
  code and tables.
- `html`: removes tags (`<br>`, `<p class=...>`, comments) and decodes entities (`&amp;`).
  Off by default: text *about* HTML legitimately contains tags.
- `urls`: web addresses (`http://`, `https://`, `www.`) become `[URL]`. Shortened links in
  social-media text (`https://t.co/G9Zdi1boy5`) are random characters: a fifth of the finance
  tweets' tokens (27.0 -> 21.0 on average), noise to the model and time to train on. Off by
  default: in other data the address is the content.

ASCII text without control characters, "&" or "<" takes a fast path of two C-level scans.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable
from typing import get_args

from tunewright.config import CleanStep

CLEAN_STEPS: tuple[CleanStep, ...] = get_args(CleanStep)  # defined once, in config

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_INVISIBLE = re.compile(
    "[\ufeff\u200b\u2060\u00ad]"
)  # BOM, zero-width space, word joiner, soft hyphen
_TRAILING_SPACE = re.compile(r"[ \t]+(?=\n)")
_BLANK_LINES = re.compile(r"\n{3,}")
_TAG = re.compile(r"<!--.*?-->|</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>", re.DOTALL)
_BLOCK_TAG = re.compile(r"<(?:br|/p|/div|/li|/h[1-6]|/tr)\s*/?>", re.IGNORECASE)
# up to whitespace, quotes or brackets, and not ending in punctuation that closes the sentence
_URL = re.compile(r"(?:\bhttps?://|\bwww\.)[^\s<>\"'()\[\]]*[^\s<>\"'()\[\].,;:!?]", re.IGNORECASE)
_ENTITY = re.compile(r"&(?:#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]{1,31});")
# In ASCII text, the characters some step may change (tab and newline aside)
_NEEDS_WORK = re.compile(r"[\x00-\x08\x0b-\x1f\x7f&<]")


class Cleaner:
    """Applies the chosen cleaning steps to a text; build once, call per text."""

    def __init__(self, steps: Iterable[CleanStep]) -> None:
        self.steps = frozenset(steps)
        unknown = self.steps - set(CLEAN_STEPS)
        if unknown:
            raise ValueError(
                f"unknown cleaning step(s) {sorted(unknown)}; choose from {CLEAN_STEPS}"
            )

    def __bool__(self) -> bool:
        return bool(self.steps)

    def clean(self, text: str) -> str:
        """The cleaned text (possibly empty: the caller decides what an empty text means)."""
        steps = self.steps
        if "urls" in steps and ("://" in text or "www." in text.lower()):
            text = _URL.sub("[URL]", text)
        if (
            text.isascii()
            and _NEEDS_WORK.search(text) is None
            and ("\n" not in text or not (" \n" in text or "\t\n" in text or "\n\n\n" in text))
        ):
            if "whitespace" in steps and (text[:1].isspace() or text[-1:].isspace()):
                return text.strip()
            return text
        if "html" in steps and ("<" in text or "&" in text):
            text = _BLOCK_TAG.sub("\n", text)
            text = _TAG.sub("", text)
            text = _ENTITY.sub(lambda m: html.unescape(m.group()), text)
        if "control" in steps:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            text = _CONTROL.sub("", text)
        if "unicode" in steps and not text.isascii():
            text = _INVISIBLE.sub("", unicodedata.normalize("NFC", text))
        if "whitespace" in steps:
            text = _BLANK_LINES.sub("\n\n", _TRAILING_SPACE.sub("", text)).strip()
        return text
