"""Precision and recall of `tunewright.data.pii` on real sentences with planted PII.

Run: PYTHONPATH=src python benchmarks/pii_eval.py [--data-dir ../shared/data] [--per-type 2000]

Sentences come from Banking77 (`banking77/raw/train.csv`, CC BY 4.0) and Twitter Financial News
(`twitter-financial-news-sentiment/raw/*.csv`, MIT). Three sets are built from them, seeded:
- planted: one synthetic PII value per sentence, inserted between two words, generated with
  valid checksums (Luhn cards of 7 brands, mod-97 IBANs of 12 countries, SSNs within the
  issuance rules, phones in 16 formats, e-mails, IPv4 and IPv6 incl. compressed forms);
- clean: every sentence as it is;
- decoys: sentences with PII look-alikes inserted: Luhn-failing 16-digit numbers, IBANs with a
  wrong check, SSN-shaped numbers with invalid parts, order numbers, amounts, dates, versions,
  and other ids (zero-padded references, sort codes, ZIP+4, ISBNs, timestamps, tracking codes).
A detection counts as correct only with the planted value's exact span and type; any other
detection, in any set, is a false positive of its type.
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
import random
import re
import string
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tunewright.data.pii import PII_TYPES, PiiRedactor, luhn_valid

REPO_ROOT = Path(__file__).resolve().parents[1]
DECOYS_PER_KIND = 1000

# Issuer prefixes and lengths of common card brands.
CARD_BRANDS = {
    "visa": (["4"], 16),
    "mastercard": (["51", "52", "53", "54", "55", "2221", "2720"], 16),
    "amex": (["34", "37"], 15),
    "discover": (["6011", "65"], 16),
    "jcb": (["3528", "3589"], 16),
    "diners": (["36", "38"], 14),
    "unionpay": (["62"], 19),
}
# BBAN layouts from the SWIFT registry: (count, n = digits / a = upper letters / c = either).
IBAN_LAYOUTS = {
    "GB": "4a6n8n",
    "DE": "8n10n",
    "FR": "5n5n11c2n",
    "ES": "4n4n1n1n10n",
    "IT": "1a5n5n12c",
    "NL": "4a10n",
    "BE": "3n7n2n",
    "CH": "5n12c",
    "PL": "8n16n",
    "NO": "4n6n1n",
    "AT": "5n11n",
    "IE": "4a6n8n",
}
PHONE_FORMATS = [
    "({a}) {b}-{c}",
    "{a}-{b}-{c}",
    "{a}.{b}.{c}",
    "+1 {a} {b} {c}",
    "1-{a}-{b}-{c}",
    "+1 ({a}) {b}-{c}",
    "+44 20 {d4} {e4}",
    "020 {d4} {e4}",
    "07{d3} {e6}",
    "+44 7{d3} {e6}",
    "+33 {f1} {p2} {q2} {r2} {s2}",
    "0{f1} {p2} {q2} {r2} {s2}",
    "+49 30 {e8}",
    "030 {e8}",
    "+34 6{p2} {d3} {b}",
    "+31 6 {e8}",
]
CONTEXT = {
    "EMAIL": ["email me at", "my address is", "contact:", "reply to", ""],
    "PHONE": ["call me on", "my number is", "phone", "text", ""],
    "CREDIT_CARD": ["my card", "card number", "charged to", "the card ending in full", ""],
    "IBAN": ["IBAN", "send it to", "account", "IBAN:", ""],
    "SSN": ["SSN", "social security number", "my SSN is", "ssn:", ""],
    "IP_ADDRESS": ["from IP", "server", "logged in from", "ip:", ""],
}


def digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(string.digits, k=n))


def luhn_complete(partial: str) -> str:
    """Append the check digit that makes `partial` pass Luhn."""
    return next(partial + d for d in string.digits if luhn_valid(partial + d))


def make_card(rng: random.Random) -> str:
    prefixes, length = CARD_BRANDS[rng.choice(list(CARD_BRANDS))]
    prefix = rng.choice(prefixes)
    number = luhn_complete(prefix + digits(rng, length - len(prefix) - 1))
    separator = rng.choice(["", " ", "-"])
    if length in (14, 15):  # Diners 4-6-4, Amex 4-6-5
        groups = [number[:4], number[4:10], number[10:]]
    else:
        groups = [number[i : i + 4] for i in range(0, length, 4)]
    return separator.join(groups)


def iban_check_digits(country: str, bban: str) -> str:
    numeric = "".join(str(int(char, 36)) for char in bban + country + "00")
    return f"{98 - int(numeric) % 97:02d}"


def make_iban(rng: random.Random, wrong_check: bool = False) -> str:
    country = rng.choice(list(IBAN_LAYOUTS))
    bban = ""
    for count, kind in re.findall(r"(\d+)([nac])", IBAN_LAYOUTS[country]):
        alphabet = {"n": string.digits, "a": string.ascii_uppercase}.get(
            kind, string.digits + string.ascii_uppercase
        )
        bban += "".join(rng.choices(alphabet, k=int(count)))
    check = iban_check_digits(country, bban)
    if wrong_check:
        check = rng.choice([f"{d:02d}" for d in range(2, 99) if f"{d:02d}" != check])
    compact = country + check + bban
    if rng.random() < 0.3:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def make_ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def make_phone(rng: random.Random) -> str:
    def nanp3() -> str:
        return str(rng.randint(2, 9)) + digits(rng, 2)

    fields = {
        "a": nanp3(),
        "b": nanp3(),
        "c": digits(rng, 4),
        "d3": digits(rng, 3),
        "d4": digits(rng, 4),
        "e4": digits(rng, 4),
        "e6": digits(rng, 6),
        "e8": digits(rng, 8),
        "f1": str(rng.randint(1, 9)),
        "p2": digits(rng, 2),
        "q2": digits(rng, 2),
        "r2": digits(rng, 2),
        "s2": digits(rng, 2),
    }
    return rng.choice(PHONE_FORMATS).format(**fields)


def make_email(rng: random.Random) -> str:
    first = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8)))
    last = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 10)))
    local = rng.choice(
        [first, f"{first}.{last}", f"{first}_{last}{rng.randint(1, 99)}", f"{first}+news"]
    )
    domain = rng.choice(
        ["gmail.com", "example.co.uk", "mail.bank-example.de", "outlook.fr", "uni.edu", "proton.me"]
    )
    return f"{local}@{domain}".capitalize() if rng.random() < 0.1 else f"{local}@{domain}"


def make_ip(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return str(ipaddress.IPv4Address(rng.getrandbits(32)))
    address = ipaddress.IPv6Address(rng.getrandbits(128) & ~((1 << rng.choice([0, 32, 64])) - 1))
    return address.compressed if rng.random() < 0.7 else address.exploded


MAKERS = {
    "EMAIL": make_email,
    "PHONE": make_phone,
    "CREDIT_CARD": make_card,
    "IBAN": make_iban,
    "SSN": make_ssn,
    "IP_ADDRESS": make_ip,
}


def make_decoy(rng: random.Random, kind: str) -> str:
    if kind == "luhn-invalid 16 digits":
        number = luhn_complete("4" + digits(rng, 14))
        number = number[:-1] + str((int(number[-1]) + rng.randint(1, 9)) % 10)
        return rng.choice(["", " ", "-"]).join(number[i : i + 4] for i in range(0, 16, 4))
    if kind == "IBAN, wrong check digits":
        return make_iban(rng, wrong_check=True)
    if kind == "SSN-shaped, invalid":
        area, group, serial = make_ssn(rng).split("-")
        broken = rng.choice(["area 000", "area 666", "area 9xx", "group 00", "serial 0000"])
        if broken.startswith("area"):
            area = broken[-3:].replace("xx", digits(rng, 2))
        elif broken == "group 00":
            group = "00"
        else:
            serial = "0000"
        return f"{area}-{group}-{serial}"
    if kind == "order number":
        return rng.choice(["order #", "order ", "ref ", "ticket ", "#"]) + str(
            rng.randint(10**5, 10**12)
        )
    if kind == "amount":
        return rng.choice(["$", "£", "€", "USD ", ""]) + f"{rng.uniform(1, 2_000_000):,.2f}"
    if kind == "date or time":
        year, month, day = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
        return rng.choice(
            [
                f"{year}-{month:02d}-{day:02d}",
                f"{day:02d}/{month:02d}/{year}",
                f"{day}.{month}.{year}",
                f"{rng.randint(0, 23)}:{rng.randint(0, 59):02d}",
                str(year),
                f"Q{rng.randint(1, 4)} {year}",
            ]
        )
    if kind == "other ids":  # real numbers that are not PII, some phone- or card-shaped
        return rng.choice(
            [
                f"order #{rng.randint(0, 10**9):010d}",  # zero-padded, phone-shaped
                f"reference {rng.randint(0, 10**9):010d}",  # the same without "#": ambiguous
                f"sort code {digits(rng, 2)}-{digits(rng, 2)}-{digits(rng, 2)}",
                f"account {digits(rng, 8)}",
                f"tracking 1Z{''.join(rng.choices(string.ascii_uppercase + string.digits, k=16))}",
                f"ZIP {digits(rng, 5)}-{digits(rng, 4)}",
                f"ISBN 978-{digits(rng, 1)}-{digits(rng, 2)}-{digits(rng, 6)}-{digits(rng, 1)}",
                f"timestamp {rng.randint(1_500_000_000, 1_800_000_000)}",
                f"ticket {digits(rng, 3)}-{digits(rng, 3)}-{digits(rng, 3)}",
            ]
        )
    if kind == "version or ratio":
        return rng.choice(
            [
                f"v{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 99)}",
                f"{rng.randint(1, 99)}.{rng.randint(0, 9)}%",
                f"{rng.randint(1, 9)}:1",
            ]
        )
    raise ValueError(kind)


DECOY_KINDS = [
    "luhn-invalid 16 digits",
    "IBAN, wrong check digits",
    "SSN-shaped, invalid",
    "order number",
    "amount",
    "date or time",
    "version or ratio",
    "other ids",
]


def plant(rng: random.Random, sentence: str, value: str, context: str) -> tuple[str, int]:
    """Insert `context value` between two words of `sentence`; return the row and value start."""
    words = sentence.split()
    cut = rng.randint(0, len(words))
    before = " ".join(words[:cut] + ([context] if context else []))
    before = before + " " if before else ""
    after = " ".join(words[cut:])
    ending = rng.choice(["", ".", ",", "!"]) if not after else rng.choice(["", ",", "."])
    return before + value + ending + (" " + after if after else ""), len(before)


def load_sentences(data_dir: Path) -> dict[str, list[str]]:
    """{"banking77": [...], "twitter": [...]}; exits 2 if the files are not there."""
    banking = data_dir / "banking77" / "raw" / "train.csv"
    twitter = sorted((data_dir / "twitter-financial-news-sentiment" / "raw").glob("*.csv"))
    if not banking.is_file() or not twitter:
        print(
            f"error: data not found under {data_dir}: need banking77/raw/train.csv and "
            "twitter-financial-news-sentiment/raw/*.csv; pass --data-dir DIR",
            file=sys.stderr,
        )
        sys.exit(2)
    sources = {"banking77": [banking], "twitter": twitter}
    sentences: dict[str, list[str]] = {}
    for name, paths in sources.items():
        sentences[name] = []
        for path in paths:
            with path.open(newline="", encoding="utf-8") as file:
                rows = csv.DictReader(file)
                sentences[name] += [row["text"].strip() for row in rows if row["text"].strip()]
    return sentences


def rows_per_second(scan: Callable[[str], object], texts: list[str]) -> float:
    start = time.perf_counter()
    for text in texts:
        scan(text)
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--per-type", type=int, default=2000, help="planted values per type")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    by_source = load_sentences(args.data_dir)
    sentences = [sentence for texts in by_source.values() for sentence in texts]
    # (row, expected spans as (start, end, type), source)
    rows: list[tuple[str, set[tuple[int, int, str]], str]] = []
    for kind, make in MAKERS.items():
        for _ in range(args.per_type):
            value = make(rng)
            text, start = plant(rng, rng.choice(sentences), value, rng.choice(CONTEXT[kind]))
            rows.append((text, {(start, start + len(value), kind)}, f"planted {kind}"))
    rows += [(sentence, set(), "clean") for sentence in sentences]
    for kind in DECOY_KINDS:
        for _ in range(DECOYS_PER_KIND):
            text, _ = plant(rng, rng.choice(sentences), make_decoy(rng, kind), "")
            rows.append((text, set(), f"decoy: {kind}"))

    redactor = PiiRedactor()
    planted: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    false_positives: Counter[str] = Counter()
    false_by_source: Counter[tuple[str, str]] = Counter()
    for text, expected, source in rows:
        found = {tuple(match) for match in redactor.find(text)}
        planted.update(kind for _, _, kind in expected)
        correct.update(kind for _, _, kind in found & expected)
        for _, _, kind in found - expected:
            false_positives[kind] += 1
            false_by_source[(kind, source)] += 1

    # The cheapest possible scan of each row, as a baseline for the redaction speed.
    any_digit_or_at = re.compile(r"[0-9@]").search
    speed_sets = {
        "Banking77 (chat)": by_source["banking77"],
        "Twitter (news)": by_source["twitter"],
        "all evaluation rows": [text for text, _, _ in rows],
    }
    speeds = {
        label: (rows_per_second(redactor.redact, texts), rows_per_second(any_digit_or_at, texts))
        for label, texts in speed_sets.items()
    }

    print(
        f"{len(sentences):,} real sentences; {len(rows):,} evaluation rows "
        f"(planted {sum(planted.values()):,}, clean {len(sentences):,}, "
        f"decoys {DECOYS_PER_KIND * len(DECOY_KINDS):,}); seed {args.seed}"
    )
    print(f"{'type':<12}{'planted':>9}{'detected':>10}{'false+':>8}{'precision':>11}{'recall':>8}")
    for kind in PII_TYPES:
        detected = correct[kind] + false_positives[kind]
        precision = correct[kind] / detected if detected else float("nan")
        recall = correct[kind] / planted[kind]
        print(
            f"{kind:<12}{planted[kind]:>9,}{correct[kind]:>10,}{false_positives[kind]:>8,}"
            f"{precision:>11.3f}{recall:>8.3f}"
        )
    print("detected = exact span and type; false+ = any other detection of that type")
    if false_by_source:
        print("false positives by source:")
        for (kind, source), count in sorted(false_by_source.items()):
            print(f"  {kind:<12} {source:<40} {count:>6,}")
    print(f"{'redact() speed on':<24}{'rows/s':>10}{'mean chars':>12}{'baseline ratio':>16}")
    for label, (redact_speed, baseline_speed) in speeds.items():
        mean_chars = sum(map(len, speed_sets[label])) / len(speed_sets[label])
        print(
            f"{label:<24}{redact_speed:>10,.0f}{mean_chars:>12.0f}"
            f"{redact_speed / baseline_speed:>16.2f}"
        )
    print("baseline: one re.search(r'[0-9@]') per row, the cheapest possible scan")


if __name__ == "__main__":
    main()
