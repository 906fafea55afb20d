"""Parsing of the bench's list options, shared by :mod:`.cli` and :mod:`.distributed`."""

from __future__ import annotations

from collections.abc import Sequence


def parse_list(text: str, allowed: Sequence[str] | None, what: str) -> list[str]:
    """The comma-separated ``text`` as a list without repeats; with ``allowed``, each item
    matched case-insensitively to one of them (ValueError naming ``--what`` otherwise)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if allowed is not None:
        lookup = {a.lower(): a for a in allowed}
        bad = [t for t in items if t.lower() not in lookup]
        if bad:
            raise ValueError(f"--{what}: unknown {', '.join(bad)}; choose from "
                             f"{', '.join(allowed)}")
        items = [lookup[t.lower()] for t in items]
    return list(dict.fromkeys(items))
