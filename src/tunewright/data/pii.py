"""PII redaction: replace e-mails, phones, payment cards, IBANs, SSNs and IP addresses (plus any
user patterns) with typed placeholders such as `[EMAIL]`.

Each type is a regex that finds candidates and, where a checksum or registry exists, a validator
that rejects look-alikes: cards must pass Luhn, IBANs ISO 7064 mod-97 and their country's
length, SSNs the issuance rules, IPs `ipaddress`. Text without a digit or "@" (most chat text)
costs one regex scan; the price is that an IPv6 address spelled without any decimal digit
("fe::ab") is missed. When matches overlap, the earlier type in this order wins, whatever the
positions: user patterns, then EMAIL, IBAN, CREDIT_CARD, SSN, IP_ADDRESS, PHONE (the most
specific first, so a card number is never tagged PHONE).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

from tunewright.config import PiiType, compile_pii_pattern

# Built-in types, in the order in which they claim overlapping text.
PII_TYPES: tuple[str, ...] = get_args(PiiType)  # defined once, in config

# IBAN length per country, from the SWIFT IBAN registry (via python-stdnum's iban.dat).
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip

# A text is scanned only if it has a digit or an "@"; the number-shaped types only if it holds
# a run of 7+ digits (single separators allowed), which every card, IBAN, SSN and phone has.
_TRIGGER = re.compile(r"[0-9@]")
_LONG_NUMBER = re.compile(r"[0-9](?:[ ()./-]{0,2}[0-9]){6}")

_EMAIL = re.compile(
    r"(?<![\w.+-])[\w.+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,24}(?![\w-])"
)
# Country code, check digits, then up to 30 letters/digits in optional groups; the validator
# cuts the candidate to its country's length, so trailing words are never swallowed.
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]){11,30}")
_CARD = re.compile(
    r"""(?<![\w+])(?:
        [0-9]{4}([ -])[0-9]{4}\1[0-9]{4}\1[0-9]{4}(?:\1[0-9]{3})?  # 4-4-4-4 (-3): 16, 19 digits
      | [0-9]{4}([ -])[0-9]{6}\2[0-9]{4,5}                        # 4-6-5 Amex, 4-6-4 Diners
      | [0-9]{13,19}                                              # unseparated
    )(?![0-9])""",
    re.VERBOSE,
)
_SSN = re.compile(r"(?<![0-9-])([0-9]{3})-([0-9]{2})-([0-9]{4})(?![0-9-])")
# Starts with a character class and leaves the "not after a digit or dot" check to the
# validator: then the regex engine skips to digits in C instead of trying every position.
_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![0-9]|\.[0-9])")
# A run of hex digits and colons (dots for an embedded IPv4) with at least two colons, and an
# optional zone; `ipaddress` decides which runs are addresses.
_IPV6 = re.compile(
    r"(?<![\w:.%])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:)[0-9A-Fa-f:.]+(?:%[0-9A-Za-z_.-]+)?(?![\w:])"
)
# Possessive digit groups ({m,n}+) keep a failed match from retrying every way of splitting a
# long digit run into groups.
_PHONE = re.compile(
    r"""(?<![\w+.,/#-])(?:
        \+[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,4}+\)?){2,6}        # international: +44 20 7946 0958
      | \(?0[0-9]{1,4}+\)?(?:[ .-]?[0-9]{2,8}+){1,4}              # national, trunk 0: 030 1234567
      | (?:1[ .-]?)?(?:\([2-9][0-9]{2}\)[ .-]?|[2-9][0-9]{2}[ .-])  # North America, separated:
        [2-9][0-9]{2}[ .-][0-9]{4}                                 #   (555) 234-5678
    )(?![\w-]|[.,]?[0-9])""",
    re.VERBOSE,
)
# An IBAN's country code and check digits just before a card or phone candidate: the
# candidate is then the BBAN of an IBAN that failed its check, not a card or phone.
_IBAN_HEAD_BEFORE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2} ?\Z")

_Span = tuple[int, int]


class PiiMatch(NamedTuple):
    """One redacted span: `text[start:end]` is replaced by `[kind]`."""

    start: int
    end: int
    kind: str  # a PII_TYPES name or an extra pattern's name


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum of payment card numbers."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Whether a compact IBAN (no spaces) has its country's length and passes ISO 7064 mod-97."""
    iban = iban.upper()
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _after_iban_head(match: re.Match[str]) -> bool:
    start = match.start()
    return _IBAN_HEAD_BEFORE.search(match.string, max(0, start - 5), start) is not None


def _card_span(match: re.Match[str]) -> _Span | None:
    if _after_iban_head(match):
        return None
    digits = match.group().replace(" ", "").replace("-", "")
    # Issuer prefixes 2-6 cover Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay and
    # Maestro; order numbers that happen to pass Luhn (one in ten) mostly start otherwise.
    if digits[0] in "23456" and luhn_valid(digits):
        return match.span()
    return None


def _iban_span(match: re.Match[str]) -> _Span | None:
    text, start = match.string, match.start()
    length = _IBAN_LENGTHS.get(text[start : start + 2].upper())
    if length is None:
        return None
    # Walk the candidate until the country's length is reached, skipping the group spaces.
    end, seen = start, 0
    while seen < length and end < match.end():
        seen += text[end] != " "
        end += 1
    if seen < length or (end < len(text) and text[end].isalnum()):
        return None
    return start, end


def _iban_checksum(candidate: str) -> bool:
    return iban_valid(candidate.replace(" ", ""))


def _ssn_span(match: re.Match[str]) -> _Span | None:
    area, group, serial = match.groups()
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return None
    return match.span()


def _ipv4_span(match: re.Match[str]) -> _Span | None:
    start = match.start()
    if start and match.string[start - 1] in "0123456789.":
        return None  # the tail of a longer dotted number
    octets = match.group().split(".")
    if all(int(octet) <= 255 and str(int(octet)) == octet for octet in octets):
        return match.span()
    return None  # out of range, or leading zeros (often read as octal)


def _ipv6_span(match: re.Match[str]) -> _Span | None:
    start, end = match.span()
    candidate = match.group()
    if candidate.endswith("."):  # a full stop after the address
        candidate, end = candidate[:-1], end - 1
    if not any(char in "0123456789abcdefABCDEF" for char in candidate.split("%")[0]):
        return None  # "::" alone
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return None
    return start, end


def _phone_span(match: re.Match[str]) -> _Span | None:
    if _after_iban_head(match):
        return None
    text = match.group()
    digits = sum(char.isdigit() for char in text)
    if text.startswith("+"):
        return match.span() if 8 <= digits <= 15 else None  # E.164 allows at most 15
    if text.lstrip("(").startswith("0"):
        return match.span() if 10 <= digits <= 11 else None
    return match.span()


def _whole_match(match: re.Match[str]) -> _Span | None:
    return match.span()


# What a text must contain before a detector's regex is worth running.
_Needs = Literal["number", "@", "two colons", "dot", "nothing"]


@dataclass(frozen=True, slots=True)
class _Detector:
    name: str
    pattern: re.Pattern[str]
    span: Callable[[re.Match[str]], _Span | None]  # the part to redact, or None: a look-alike
    needs: _Needs
    # A span that fails its checksum is a look-alike that still owns its text: a mistyped IBAN
    # is not redacted, and neither are the card- or phone-like digit runs inside it.
    checksum: Callable[[str], bool] | None = None


_BUILT_IN = {
    "EMAIL": [_Detector("EMAIL", _EMAIL, _whole_match, "@")],
    "IBAN": [_Detector("IBAN", _IBAN, _iban_span, "number", _iban_checksum)],
    "CREDIT_CARD": [_Detector("CREDIT_CARD", _CARD, _card_span, "number")],
    "SSN": [_Detector("SSN", _SSN, _ssn_span, "number")],
    "IP_ADDRESS": [  # IPv6 first: it may end in an embedded IPv4 address
        _Detector("IP_ADDRESS", _IPV6, _ipv6_span, "two colons"),
        _Detector("IP_ADDRESS", _IPV4, _ipv4_span, "dot"),
    ],
    "PHONE": [_Detector("PHONE", _PHONE, _phone_span, "number")],
}


_ONLY_USER_PATTERNS = {
    "number": False,
    "@": False,
    "two colons": False,
    "dot": False,
    "nothing": True,
}


class PiiRedactor:
    r"""Replaces PII in text with typed placeholders; build once, call `redact` per text.

    `types` picks built-in types from `PII_TYPES`. `extra_patterns` maps a placeholder name to
    a regex, e.g. `{"MRN": r"MRN[:# ]*\d{6,10}"}` turns "MRN: 12345678" into "[MRN]".
    """

    def __init__(
        self, types: Iterable[str] = PII_TYPES, extra_patterns: Mapping[str, str] | None = None
    ) -> None:
        types = list(types)
        unknown = sorted(set(types) - set(PII_TYPES))
        if unknown:
            raise ValueError(
                f"unknown PII type(s) {', '.join(map(repr, unknown))} in types; "
                f"choose from {', '.join(PII_TYPES)}"
            )
        detectors = [_compile_extra(name, regex) for name, regex in (extra_patterns or {}).items()]
        for name in PII_TYPES:
            if name in types:
                detectors.extend(_BUILT_IN[name])
        self._detectors = tuple(detectors)
        self._always_scan = any(detector.needs == "nothing" for detector in detectors)

    @property
    def scans_every_text(self) -> bool:
        """False when only texts with a digit or "@" can hold PII (no user patterns)."""
        return self._always_scan

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        """Return `text` with PII replaced by `[TYPE]`, and how many of each type were replaced."""
        counts: Counter[str] = Counter()
        found = self.find(text)
        if not found:
            return text, counts
        pieces, position = [], 0
        for start, end, kind in found:
            pieces += [text[position:start], f"[{kind}]"]
            counts[kind] += 1
            position = end
        pieces.append(text[position:])
        return "".join(pieces), counts

    def find(self, text: str) -> list[PiiMatch]:
        """The PII spans `redact` would replace, in text order (they never overlap)."""
        if _TRIGGER.search(text) is not None:
            present = {
                "number": _LONG_NUMBER.search(text) is not None,
                "@": "@" in text,
                "two colons": text.count(":") >= 2,
                "dot": "." in text,
                "nothing": True,
            }
        elif self._always_scan:
            present = _ONLY_USER_PATTERNS
        else:
            return []
        claimed: list[PiiMatch] = []
        for detector in self._detectors:
            if not present[detector.needs]:
                continue
            position = 0
            while match := detector.pattern.search(text, position):
                span = detector.span(match)
                if span is None or _overlaps(span, claimed):
                    # Look again one character on: a rejected candidate, such as "1 555-234-5678"
                    # after the IPv6 address "::1", may hide a valid one inside it.
                    position = match.start() + 1
                    continue
                is_pii = detector.checksum is None or detector.checksum(text[span[0] : span[1]])
                claimed.append(PiiMatch(*span, detector.name if is_pii else ""))
                position = span[1]
        return sorted(match for match in claimed if match.kind)


def _overlaps(span: _Span, claimed: list[PiiMatch]) -> bool:
    start, end = span
    return any(start < other.end and other.start < end for other in claimed)


def _compile_extra(name: str, regex: str) -> _Detector:
    return _Detector(name, compile_pii_pattern(name, regex), _whole_match, "nothing")
