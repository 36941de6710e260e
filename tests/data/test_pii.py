"""Tests for tunewright.data.pii: each PII type, its look-alikes, overlaps, counts and config."""

import string
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunewright.data.pii import PII_TYPES, PiiMatch, PiiRedactor, iban_valid, luhn_valid

REDACTOR = PiiRedactor()


def redacted(text: str) -> str:
    return REDACTOR.redact(text)[0]


def with_luhn_check_digit(partial: str) -> str:
    return next(partial + d for d in string.digits if luhn_valid(partial + d))


@pytest.mark.parametrize(
    "card",
    [
        "4111 1111 1111 1111",  # Visa
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555 5555 5555 4444",  # Mastercard
        "2221 0000 0000 0009",  # Mastercard 2-series
        "3782 822463 10005",  # Amex, 4-6-5
        "6011111111111117",  # Discover
        "3056 930902 5904",  # Diners, 4-6-4
    ],
)
def test_valid_cards_are_redacted(card: str) -> None:
    assert redacted(f"my card is {card}, thanks") == "my card is [CREDIT_CARD], thanks"


@pytest.mark.parametrize(
    "number",
    [
        "4111 1111 1111 1112",  # fails Luhn
        "4111111111111112",
        "12345678901234567890123",  # a long id: no card inside a longer digit run
    ],
)
def test_card_look_alikes_are_kept(number: str) -> None:
    assert redacted(f"ref {number} ok") == f"ref {number} ok"


@given(st.text(alphabet=string.digits, min_size=14, max_size=17), st.sampled_from("23456"))
def test_every_luhn_valid_number_with_an_issuer_prefix_is_a_card(body: str, first: str) -> None:
    card = with_luhn_check_digit(first + body)
    assert REDACTOR.find(f"card {card}") == [PiiMatch(5, 5 + len(card), "CREDIT_CARD")]
    wrong = card[:-1] + str((int(card[-1]) + 1) % 10)
    assert all(match.kind != "CREDIT_CARD" for match in REDACTOR.find(f"card {wrong}"))


@pytest.mark.parametrize(
    "iban",
    [
        "GB82 WEST 1234 5698 7654 32",
        "GB82WEST12345698765432",
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "fr14 2004 1010 0505 0001 3m02 606",  # lower case is still an IBAN
    ],
)
def test_valid_ibans_are_redacted(iban: str) -> None:
    assert redacted(f"IBAN: {iban}. Cheers") == "IBAN: [IBAN]. Cheers"


@pytest.mark.parametrize(
    "iban",
    ["GB83 WEST 1234 5698 7654 32", "DE88 3704 0044 0532 0130 00", "DE89 3704 0044 0532 0130 0"],
)
def test_ibans_with_a_wrong_check_or_length_are_kept_whole(iban: str) -> None:
    # Not redacted, and their digits are not re-read as a card or phone number either.
    assert redacted(f"IBAN {iban} ok") == f"IBAN {iban} ok"


def test_iban_valid_checks_country_length_and_mod_97() -> None:
    assert iban_valid("GB82WEST12345698765432")
    assert not iban_valid("GB82WEST1234569876543")  # one character short for GB
    assert not iban_valid("XX82WEST12345698765432")  # no such country


def test_ssns_follow_the_issuance_rules() -> None:
    assert redacted("SSN 123-45-6789.") == "SSN [SSN]."
    for invalid in ["000-12-3456", "666-12-3456", "900-12-3456", "123-00-4567", "123-45-0000"]:
        assert REDACTOR.find(f"SSN {invalid}") == [], invalid
    assert redacted("id 123-45-6789-1") == "id 123-45-6789-1"  # part of a longer id


def test_ipv4_octets_must_be_in_range() -> None:
    assert redacted("from 192.168.0.1 and 10.0.0.255.") == "from [IP_ADDRESS] and [IP_ADDRESS]."
    for text in ["256.1.1.1", "1.2.3.999", "1.2.3.4.5", "01.2.3.4"]:
        assert REDACTOR.find(f"from {text} now") == [], text


@pytest.mark.parametrize(
    "address",
    [
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "2001:db8::1",
        "::1",
        "fe80::1%eth0",
        "::ffff:192.0.2.128",
    ],
)
def test_ipv6_addresses_are_redacted(address: str) -> None:
    assert redacted(f"host {address}, down") == "host [IP_ADDRESS], down"


def test_times_and_mac_addresses_are_not_ipv6() -> None:
    text = "at 12:30:45 the device 00:1A:2B:3C:4D:5E said: hello:world"
    assert redacted(text) == text


def test_emails_are_redacted_but_mentions_are_not() -> None:
    text = "Mail jane.doe+bank@example.co.uk or @support."
    assert redacted(text) == "Mail [EMAIL] or @support."


@pytest.mark.parametrize(
    "phone",
    [
        "+44 20 7946 0958",
        "+1 (555) 234-5678",
        "(555) 234-5678",
        "555-234-5678",
        "555.234.5678",
        "1-555-234-5678",
        "020 7946 0958",
        "07700 900123",
        "01 23 45 67 89",
        "+33 1 23 45 67 89",
        "+49 30 12345678",
    ],
)
def test_phones_in_common_formats_are_redacted(phone: str) -> None:
    assert redacted(f"call me on {phone} today") == "call me on [PHONE] today"


@pytest.mark.parametrize(
    "text",
    [
        "In 2020 I paid $1,234.56 on 2020-10-12 (12/10/2020) at 10:30",
        "order #0833781868 shipped",
        "batch 123456789012345678901234 done",  # a long digit run
        "see ISBN 978-3-16-148410-0",
    ],
)
def test_years_amounts_dates_and_ids_are_not_phones(text: str) -> None:
    assert redacted(text) == text


def test_a_card_number_is_never_tagged_phone() -> None:
    assert REDACTOR.redact("+ 4111 1111 1111 1111")[1] == Counter({"CREDIT_CARD": 1})


def test_counts_per_type() -> None:
    text = "a@b.io, c@d.io, +44 20 7946 0958, 4111111111111111, 10.0.0.1"
    assert REDACTOR.redact(text) == (
        "[EMAIL], [EMAIL], [PHONE], [CREDIT_CARD], [IP_ADDRESS]",
        Counter({"EMAIL": 2, "PHONE": 1, "CREDIT_CARD": 1, "IP_ADDRESS": 1}),
    )


def test_find_returns_sorted_spans_that_redact_replaces() -> None:
    text = "ip 10.0.0.1 mail x@y.org"
    assert REDACTOR.find(text) == [PiiMatch(3, 11, "IP_ADDRESS"), PiiMatch(17, 24, "EMAIL")]


@given(st.text(alphabet=string.ascii_letters + " .,:;!?'-()\n"))
def test_text_without_digits_or_at_signs_is_unchanged(text: str) -> None:
    assert REDACTOR.redact(text) == (text, Counter())


def test_only_enabled_types_are_redacted() -> None:
    emails_only = PiiRedactor(types={"EMAIL"})
    assert emails_only.redact("x@y.org 555-234-5678") == ("[EMAIL] 555-234-5678", Counter(EMAIL=1))


def test_extra_patterns_get_their_own_placeholder_and_win_overlaps() -> None:
    redactor = PiiRedactor(extra_patterns={"MRN": r"MRN[:# ]*\d{6,10}", "TICKET": r"T-\d{10}"})
    assert redactor.redact("MRN: 12345678, ticket T-5552345678, a@b.io") == (
        "[MRN], ticket [TICKET], [EMAIL]",
        Counter({"MRN": 1, "TICKET": 1, "EMAIL": 1}),
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"types": {"EMAIL", "PASSPORT"}}, r"unknown PII type\(s\) 'PASSPORT'"),
        (
            {"extra_patterns": {"MRN": r"MRN[0-9"}},
            r"extra_patterns\['MRN'\]: invalid regex 'MRN\[0-9'",
        ),
        ({"extra_patterns": {"ANY": r"\d*"}}, r"extra_patterns\['ANY'\].*matches the empty string"),
        ({"extra_patterns": {"EMAIL": r"x"}}, r"bad name 'EMAIL'"),
        ({"extra_patterns": {"has space": r"x"}}, r"bad name 'has space'"),
    ],
)
def test_bad_config_names_the_offending_entry(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PiiRedactor(**kwargs)


def test_all_types_are_enabled_by_default() -> None:
    text = "a@b.io GB82 WEST 1234 5698 7654 32 4111111111111111 123-45-6789 ::1 555-234-5678"
    assert set(REDACTOR.redact(text)[1]) == set(PII_TYPES)
