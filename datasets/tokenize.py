"""A deterministic tokenizer fit for a keyboard: lower-cased words and punctuation.

Words keep in-word apostrophes (``don't``, ``o'er``) and the common leading elisions of
the default corpus (``'tis``, ``'twas``, ``'em``); punctuation marks are tokens of their
own, because a keyboard suggests the next word after a comma too. Sentences end at
``.``, ``!`` or ``?`` (the mark stays with its sentence; a run such as ``?!`` or ``...``
is one mark, its first). Quotes, brackets and other symbols are dropped.

Messages people type are messier than plays: letters of any script are words (``café``,
``привет``, ``日本``), numbers keep their separators (``3.14``, ``10,000``, ``12:30``),
a URL becomes the one token ``<url>`` and an e-mail address ``<email>`` (a keyboard
cannot predict the address, but it can learn that one comes next), emoticons (``:)``,
``;-p``, ``<3``) and emoji (with their skin tones, joiners and flags) are tokens of their
own, as keyboards suggest them too.
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

URL, EMAIL = "<url>", "<email>"
_EMOJI = "\u2600-\u27bf\U0001f1e6-\U0001f1ff\U0001f300-\U0001faff"
_TOKEN = re.compile(
    r"(?P<url>(?:https?://|www\.)\S+?)(?=[.,!?;:)]*(?:\s|$))"
    r"|(?P<email>[\w.+-]+@[^\W_]+(?:[.-][^\W_]+)*\.[^\W\d_]{2,})"
    r"|\d+(?:[.,:/]\d+)+"  # 3.14, 10,000, 12:30, 1/2
    r"|(?:[:;=]-?[)(\]\[dpo3/|*]|<3)(?![^\W_])"  # emoticons
    r"|'?[^\W_]+(?:'[^\W_]+)*"  # words (any script), in-word apostrophes
    r"|[\U0001f1e6-\U0001f1ff]{2}"  # a flag: two regional indicators
    rf"|[{_EMOJI}](?:[\ufe0f\U0001f3fb-\U0001f3ff]|\u200d[{_EMOJI}])*"  # emoji
    r"|-+"  # dashes (collapsed to one "-")
    r"|[.!?]+"  # a run of sentence marks (one mark: its first)
    r"|[,;:]"
)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})


def normalize(text: str) -> str:
    """NFKC, lower case, and one kind of apostrophe."""
    return unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()


def tokens(text: str) -> list[str]:
    """All tokens of ``text`` in order (no sentence split)."""
    out: list[str] = []
    for m in _TOKEN.finditer(normalize(text)):
        tok = m.group()
        if m.lastgroup == "url":
            tok = URL
        elif m.lastgroup == "email":
            tok = EMAIL
        elif tok[0] == "-":
            tok = "-"
        elif tok[0] in SENTENCE_END:
            tok = tok[0]
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
