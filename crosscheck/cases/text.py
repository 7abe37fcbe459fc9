"""Text cases (filled in with the text family)."""

from __future__ import annotations

from crosscheck.cases.base import Case


def cases(size: str = "small") -> list[Case]:
    return []
