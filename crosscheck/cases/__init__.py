"""Every model case the cross-check (and the test suite) runs, by family."""

from __future__ import annotations

from crosscheck.cases import audio, data2vec2, text, vision
from crosscheck.cases.base import Case

FAMILY_MODULES = {"text": text, "audio": audio, "vision": vision, "data2vec2": data2vec2}


def all_cases(size: str = "small", families=None) -> list[Case]:
    """The cases of the chosen families; ``size`` is "small" (tests, default run) or "base"."""
    out: list[Case] = []
    for family, module in FAMILY_MODULES.items():
        if families is None or family in families:
            out.extend(module.cases(size))
    return out


__all__ = ["Case", "all_cases"]
