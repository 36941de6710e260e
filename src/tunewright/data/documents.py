"""Documents for continued pre-training: plain text, Markdown and HTML files become `text` rows.

A document is streamed in blocks of whole paragraphs of about `BLOCK_CHARS` characters (a small
file is one block), so memory stays bounded; preparation later cuts each block into pieces of at
most `data.max_seq_len` tokens. HTML is reduced to its visible text: scripts, styles and the
head are skipped, and block elements (paragraphs, headings, list items, table rows) end lines.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

from tunewright.data.readers import Row

BLOCK_CHARS = 32_768
_READ_BYTES = 1 << 16


def read_text(path: Path) -> Iterator[Row]:
    """A plain-text or Markdown file, in blocks of paragraphs; each line must be UTF-8."""
    block: list[str] = []
    size, start = 0, 1
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Row(
                    f"{path}:{line_no}",
                    None,
                    f"invalid UTF-8 at byte {e.start} of the line",
                    "invalid UTF-8",
                )
                continue
            if not block:
                start = line_no
            block.append(line)
            size += len(line)
            if size >= BLOCK_CHARS and not line.strip():  # cut only between paragraphs
                yield Row(f"{path}:{start}", {"text": "".join(block)})
                block, size = [], 0
    if "".join(block).strip():
        yield Row(f"{path}:{start}", {"text": "".join(block)})


# Elements whose text is never shown, and elements that start a new line.
_HIDDEN = frozenset({"script", "style", "head", "noscript", "template", "svg", "iframe"})
_BLOCKS = frozenset(
    "p div br li ul ol h1 h2 h3 h4 h5 h6 tr table section article header footer nav aside "
    "blockquote pre hr dd dt dl figure figcaption main form address".split()
)


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hidden_depth = 0
        self.in_pre = 0
        self.lines: list[str] = []  # finished lines
        self.current: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in _HIDDEN:
            self.hidden_depth += 1
        elif tag in _BLOCKS:
            self._end_line(blank=tag not in ("br", "li", "tr", "dd", "dt"))
            self.in_pre += tag == "pre"

    def handle_startendtag(self, tag: str, attrs) -> None:
        if tag in _BLOCKS:
            self._end_line(blank=False)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self.hidden_depth = max(0, self.hidden_depth - 1)
        elif tag in _BLOCKS:
            self._end_line(blank=tag not in ("li", "tr", "dd", "dt"))
            self.in_pre -= tag == "pre" and self.in_pre > 0

    def handle_data(self, data: str) -> None:
        if self.hidden_depth:
            return
        if self.in_pre:
            *done, rest = data.split("\n")
            for part in done:
                self.current.append(part)
                self._end_line(blank=False)
            self.current.append(rest)
        else:
            self.current.append(" ".join(data.split()) if data.strip() else " ")

    def _end_line(self, *, blank: bool) -> None:
        line = "".join(self.current) if self.in_pre else " ".join("".join(self.current).split())
        self.current = []
        if line:
            self.lines.append(line)
        if blank and self.lines and self.lines[-1] != "":
            self.lines.append("")

    def take_text(self, *, final: bool) -> str:
        if final:
            self._end_line(blank=False)
        text = "\n".join(self.lines).strip("\n")
        self.lines = []
        return text


def html_to_text(html: str) -> str:
    """The visible text of an HTML document, one line per block element."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.take_text(final=True)


def read_html(path: Path) -> Iterator[Row]:
    """An HTML file's visible text, in blocks; the file must be UTF-8."""
    parser = _TextExtractor()
    decoder = codecs.getincrementaldecoder("utf-8")()
    start_line, offset = 1, 0
    with path.open("rb") as f:
        while True:
            raw = f.read(_READ_BYTES)
            try:
                parser.feed(decoder.decode(raw, final=not raw))
            except UnicodeDecodeError as e:
                yield Row(
                    f"{path}:{parser.getpos()[0]}",
                    None,
                    f"invalid UTF-8 at byte {offset + e.start}; the rest of the file was not read",
                    "invalid UTF-8",
                )
                return
            offset += len(raw)
            if not raw:
                break
            if sum(map(len, parser.lines)) >= BLOCK_CHARS:
                text = parser.take_text(final=False)
                yield Row(f"{path}:{start_line}", {"text": text})
                start_line = parser.getpos()[0]
    parser.close()
    text = parser.take_text(final=True)
    if text.strip():
        yield Row(f"{path}:{start_line}", {"text": text})
