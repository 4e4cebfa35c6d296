"""Did-you-mean for policy_ir: field names, keys, operators and values a user misspelt.

Errors (validate.py) and catalog warnings (hints.py) both end in " (did you mean 'x'?)".
Operators get a table of the spellings people bring from SQL, Mongo or JavaScript,
because a close spelling is not always what they meant.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection

__all__ = ["OP_ALIASES", "meant_op", "suggest", "suggest_op", "suggest_value"]

# Spellings users bring from SQL, Mongo or JavaScript. difflib alone maps 'gte' to 'gt'
# (one letter away) when the user meant 'ge', and finds nothing for 'equals' or '>='.
OP_ALIASES = {
    "gte": "ge", "geq": "ge", ">=": "ge", "=>": "ge", "lte": "le", "leq": "le", "<=": "le", "=<": "le",
    ">": "gt", "<": "lt", "equals": "eq", "equal": "eq", "is": "eq", "=": "eq", "==": "eq", "===": "eq",
    "neq": "ne", "!=": "ne", "<>": "ne", "not_equals": "ne", "not_in": "nin", "notin": "nin",
    "contains": "has", "includes": "has",
}


def suggest(word: str, choices: Collection[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def meant_op(word: str, choices: Collection[str]) -> str | None:
    """The operator among `choices` that `word` most likely means: itself, a known alias
    ('gte' -> 'ge', '$eq' -> 'eq', '==' -> 'eq'), or a close spelling."""
    key = word.strip().lower().lstrip("$")
    for meant in (key, OP_ALIASES.get(key)):
        if meant in choices:
            return meant
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def suggest_op(word: str, choices: Collection[str]) -> str:
    meant = meant_op(word, choices)
    return f" (did you mean {meant!r}?)" if meant and meant != word else ""


def suggest_value(value: str, known: Collection[str]) -> str:
    """For a value no catalog entry has: the same one in other case ('EU' -> 'eu'), or a close one."""
    folded = sorted(k for k in known if k.casefold() == value.casefold())
    return f" (did you mean {folded[0]!r}?)" if folded else suggest(value, sorted(known))
