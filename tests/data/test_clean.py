"""Cleaning steps: each changes only what it names, and ASCII text passes through untouched."""

import pytest

from tunewright.data.clean import Cleaner
from tunewright.data.documents import html_to_text

DEFAULT = Cleaner(["unicode", "control", "whitespace"])


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("plain ascii text", "plain ascii text"),
        ("  padded \n", "padded"),
        ("cafe\u0301", "caf\u00e9"),  # NFC composes the accent
        (
            "x\u00b2 and \ufb01le",
            "x\u00b2 and \ufb01le",
        ),  # NFC, not NFKC: superscripts and ligatures stay
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("bell\x07 and\x00 nul", "bell and nul"),
        ("windows\r\nlines\rold mac", "windows\nlines\nold mac"),
        ("trailing   \nspaces\t\n\n\n\nmany blank", "trailing\nspaces\n\nmany blank"),
        ("    indented code\n        stays", "indented code\n        stays"),
        ("a <b>tag</b> &amp; entity", "a <b>tag</b> &amp; entity"),  # html is opt-in
    ],
)
def test_default_steps(text, cleaned):
    assert DEFAULT.clean(text) == cleaned


def test_html_remnants():
    cleaner = Cleaner(["html", "whitespace"])
    assert (
        cleaner.clean("Hello<br>world &amp; <b>friends</b><!-- note -->&#33;")
        == "Hello\nworld & friends!"
    )
    assert cleaner.clean("if a < b then") == "if a < b then"  # not a tag


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("$ALLY - Ally pulls outlook https://t.co/G9Zdi1boy5", "$ALLY - Ally pulls outlook [URL]"),
        (
            "see www.example.com/a?b=1. Then (http://x.org/p) and HTTPS://A.B/c, done",
            "see [URL]. Then ([URL]) and [URL], done",
        ),  # closing punctuation and brackets stay
        (
            "an https:// with nothing after, ftp://host",
            "an https:// with nothing after, ftp://host",
        ),
        ("no link in www or http", "no link in www or http"),
    ],
)
def test_urls_become_a_placeholder(text, cleaned):
    assert Cleaner(["urls"]).clean(text) == cleaned
    assert DEFAULT.clean(text) == text  # opt-in


def test_no_steps_changes_nothing():
    assert Cleaner([]).clean(" \x07 x ") == " \x07 x "


def test_html_to_text_keeps_blocks_and_drops_scripts():
    html = "<html><head><title>T</title></head><body><h1>Title</h1><script>x=1</script><ul><li>one</li><li>two</li></ul><pre>a\n  b</pre></body></html>"
    assert html_to_text(html) == "Title\n\none\ntwo\n\na\n  b"
