"""Optional scrubbing of personal data before embedding.

When enabled (``EMBEDSTREAM_SCRUBBER``), the text of every upsert is scrubbed before it is
chunked, so personal data is neither embedded nor stored: the stored chunk text and
the vectors both come from the scrubbed text. What was replaced is counted per kind
(metric ``embedstream_scrubbed_total{kind}``).

Scrubbers are pluggable: ``none``, ``regex`` (built in: e-mail addresses, phone numbers,
payment card numbers that pass the Luhn check), or ``package.module:factory`` naming a
callable that returns an object with ``name`` and ``scrub(text) -> (text, {kind: count})``.

    >>> s = RegexScrubber()
    >>> s.scrub("Mail jane.doe@example.org or call +44 20 7946 0958; card 4111 1111 1111 1111.")
    ('Mail [EMAIL] or call [PHONE]; card [CARD].', {'email': 1, 'card': 1, 'phone': 1})
    >>> s.scrub("Order 1234 5678 9012 3456 shipped in 2024.")[1]   # fails Luhn: not a card
    {}
"""
from __future__ import annotations

import importlib
import re
from typing import Protocol


class Scrubber(Protocol):
    name: str

    def scrub(self, text: str) -> tuple[str, dict[str, int]]: ...


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


class RegexScrubber:
    """E-mail addresses, phone numbers and Luhn-valid card numbers -> [EMAIL] [PHONE] [CARD]."""

    name = "regex-v1"
    EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
    CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
    # international (+CC ...) or grouped national numbers with 9+ digits in total
    PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?!\w)")

    def scrub(self, text: str) -> tuple[str, dict[str, int]]:
        counts: dict[str, int] = {}

        def sub(kind: str, token: str, pattern: re.Pattern, text: str, check=None) -> str:
            def repl(m: re.Match) -> str:
                if check is not None and not check(m.group(0)):
                    return m.group(0)
                counts[kind] = counts.get(kind, 0) + 1
                return token
            return pattern.sub(repl, text)

        text = sub("email", "[EMAIL]", self.EMAIL, text)
        text = sub("card", "[CARD]", self.CARD, text,
                   lambda s: 13 <= len(d := re.sub(r"\D", "", s)) <= 19 and _luhn_ok(d))
        text = sub("phone", "[PHONE]", self.PHONE, text,
                   lambda s: len(re.sub(r"\D", "", s)) >= 9 and not re.fullmatch(r"\d{4}([\s.-]\d{4}){3,4}", s))
        return text, counts


def load_scrubber(spec: str) -> Scrubber | None:
    """``none``/empty -> None, ``regex`` -> RegexScrubber, ``module:factory`` -> factory()."""
    if spec in ("", "none"):
        return None
    if spec == "regex":
        return RegexScrubber()
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"scrubber {spec!r}: use none, regex or package.module:factory")
    obj = getattr(importlib.import_module(module), attr)()
    if not callable(getattr(obj, "scrub", None)) or not getattr(obj, "name", None):
        raise ValueError(f"scrubber {spec!r} must provide .name and .scrub(text) -> (text, counts)")
    return obj
