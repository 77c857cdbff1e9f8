"""The battery's cases by name, and the four classes a case ends in."""

from __future__ import annotations


CLASSES = ("good", "unclear_error", "silent_wrong", "data_loss")
CASES: dict[str, tuple[str, object, int]] = {}  # name -> (category, function(ctx) -> (class, detail), timeout s)


def case(category: str, name: str, timeout: int = 180, **bound):
    def register(function):
        CASES[name] = (category, (lambda ctx: function(ctx, **bound)) if bound else function, timeout)
        return function

    return register


