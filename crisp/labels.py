"""How a label written in a data file is matched to a task's label names: one rule, used by the
configuration's check (crisp.config) and by the reading of the data (crisp.tabular).

- A label name matches ignoring case and surrounding spaces ("Positive ", "POSITIVE" are "positive"),
  so label names must differ in more than case: [A, a, b] is rejected.
- A name that looks like a number ("1", "-1", "2.5") matches that number however it is written
  ("1", "1.0", 1), and two names may not be the same number ("1" and "1.0").
- An integer label 0..K-1 is the index of a name only when no name looks like a number: with names
  ["1", "2", "3"] the label 1 is the name "1" (index 0), never index 1.

Imports nothing heavy: the Snakefile checks label names when it loads.
"""

from __future__ import annotations

import math
import re

NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def label_key(text: str) -> str | float:
    """What a label name or a label value is matched by: its number, if it looks like one, else its
    text without surrounding spaces and case."""
    text = text.strip()
    if NUMBER.fullmatch(text):
        number = float(text)
        if math.isfinite(number):
            return number + 0.0  # -0 is 0
    return text.casefold()


def names_look_like_numbers(label_names: list[str]) -> bool:
    return any(isinstance(label_key(name), float) for name in label_names)


def label_names_problem(label_names: list) -> str | None:
    """Why these label names cannot be told apart under the rule above, or None."""
    first = {}
    for name in label_names:
        if not isinstance(name, str) or not name.strip():
            return f"{name!r} is not a label name: give non-empty text"
        key = label_key(name)
        if key not in first:
            first[key] = name
        elif first[key] == name:
            return f"{name!r} is given twice"
        else:
            how = "are the same number" if isinstance(key, float) else "differ only in case or spaces"
            return (
                f"{first[key]!r} and {name!r} {how}, and labels are matched ignoring case and spaces "
                "(numbers by value): rename one"
            )
    return None
