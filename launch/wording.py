"""Counted nouns in the launcher's messages: "1 worker", "2 workers" (never "1 workers" or "point(s)")."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
