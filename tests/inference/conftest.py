"""Fixtures of the inference tests: hooks into the label-map shortcut of :mod:`csap_zoo.inference.bands`."""
from __future__ import annotations

from typing import List

import pytest

import csap_zoo.inference.bands as bands


@pytest.fixture
def interpolated_values(monkeypatch) -> List[int]:
    """The number of candidate values the label-map shortcut interpolates, one entry per group of pixels (empty
    when it fell back to the full resize)."""
    counts: List[int] = []
    original = bands._Plan._values

    def counting(self, y, x, slot, width, classes):
        values = original(self, y, x, slot, width, classes)
        counts.append(values.numel())
        return values

    monkeypatch.setattr(bands._Plan, "_values", counting)
    return counts


@pytest.fixture
def always_shortcut(monkeypatch) -> None:
    """Take the label-map shortcut whatever it costs, so that its arithmetic is what a test checks."""
    monkeypatch.setattr(bands, "_VALUE_COST", {1: 0.0, 2: 0.0})
    monkeypatch.setattr(bands, "_PIXEL_COST", 0.0)
    monkeypatch.setattr(bands, "_MAX_CHANGING", 1.0)
