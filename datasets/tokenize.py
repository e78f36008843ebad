"""A deterministic tokenizer fit for a keyboard: lower-cased words and punctuation.

Words keep in-word apostrophes (``don't``, ``o'er``) and the common leading elisions of
the default corpus (``'tis``, ``'twas``, ``'em``); punctuation marks are tokens of their
own, because a keyboard suggests the next word after a comma too. Sentences end at
``.``, ``!`` or ``?`` (the mark stays with its sentence). Quotes, brackets and other
symbols are dropped.
"""

from __future__ import annotations

import re
import unicodedata

# Leading-apostrophe words; any other leading apostrophe is taken as a quote mark.
ELISIONS = frozenset(
    {"'tis", "'twas", "'twere", "'twill", "'twould", "'twixt", "'tween", "'em", "'gainst",
     "'s", "'ld", "'ll", "'d", "'t"}
)
SENTENCE_END = frozenset({".", "!", "?"})
PUNCTUATION = frozenset({".", ",", "!", "?", ";", ":", "-"})

_TOKEN = re.compile(
    r"'?[a-z0-9\u00e0-\u024f]+(?:'[a-z0-9\u00e0-\u024f]+)*"  # words, in-word apostrophes
    r"|-+"  # dashes (collapsed to one "-")
    r"|[.,!?;:]"
)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})


def normalize(text: str) -> str:
    """NFKC, lower case, and one kind of apostrophe."""
    return unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()


def tokens(text: str) -> list[str]:
    """All tokens of ``text`` in order (no sentence split)."""
    out: list[str] = []
    for tok in _TOKEN.findall(normalize(text)):
        if tok[0] == "-":
            tok = "-"
        elif tok[0] == "'" and tok not in ELISIONS:
            tok = tok[1:]
        out.append(tok)
    return out


def sentences(text: str) -> list[list[str]]:
    """Tokens of ``text`` split into sentences; sentences without a word are dropped."""
    result: list[list[str]] = []
    current: list[str] = []
    for tok in tokens(text):
        current.append(tok)
        if tok in SENTENCE_END:
            _flush(current, result)
            current = []
    _flush(current, result)
    return result


def _flush(current: list[str], result: list[list[str]]) -> None:
    # Leading punctuation (a dangling comma after an elided phrase) carries nothing.
    while current and current[0] in PUNCTUATION:
        current.pop(0)
    if any(t not in PUNCTUATION for t in current):
        result.append(current)
