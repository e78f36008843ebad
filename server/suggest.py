"""From typed text to a model prefix, and from the model's top-k to keyboard suggestions.

Pure functions over the artifact's vocabulary (no interpreter here), shared by the
prediction endpoint and ``fedkb predict --model``.

Reading the text (the training tokenizer, :mod:`fedkb.datasets.tokenize`):

- The text is normalised like the corpus (NFKC, lower case, one kind of apostrophe).
- If it ends inside a word (its last character is a letter, digit or apostrophe), that
  trailing run is the *partial word* and the request asks for completions of it;
  otherwise (empty text, a trailing space or punctuation mark) it asks for the next word.
- The text before the partial word is tokenized; only the current sentence counts (a new
  one starts after ``.``, ``!`` or ``?``; leading punctuation is dropped, as in training).
  The prefix is ``[BOS] + ids`` (unknown words -> OOV); only its last T tokens reach the
  model (:meth:`~fedkb.device_runtime.trainer.Trainer.infer` cuts them).

Ranking (the model's ``infer`` signature returns only its top ``infer_k`` words):

- Candidates are the vocabulary's *words*: never a special token (PAD, BOS, EOS, OOV),
  never a bare punctuation mark (a suggestion strip offers words); when completing, only
  words that start with the partial word (a leading apostrophe that matches nothing is
  read as a quote mark and dropped).
- Candidates in the model's top-k come first, by the model's probability ``p``; the
  rest follow in corpus-frequency order (vocabulary ids are frequency-ordered), with
  ``p = None``, since the model's probability for them is not known (it is below the
  k-th probability). The result holds at most ``k`` suggestions.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedkb.artifact import BOS, NUM_SPECIAL, OOV
from fedkb.datasets.tokenize import PUNCTUATION, SENTENCE_END, normalize, tokens

_PARTIAL = re.compile(r"[a-z0-9\u00e0-\u024f']+$")
_WORDLIKE = re.compile(r"[a-z0-9\u00e0-\u024f]")


@dataclass(frozen=True)
class Query:
    """What the model is asked: the prefix ids and, when completing, the partial word."""

    prefix: tuple[int, ...]
    partial: str | None  # None: next-word suggestions


@dataclass(frozen=True)
class Suggestion:
    word: str
    p: float | None  # the model's probability; None when ranked by frequency

    def to_json(self) -> dict[str, object]:
        return {"word": self.word, "p": None if self.p is None else round(self.p, 6)}


class Suggester:
    """Parses text into :class:`Query` and ranks suggestions, for one vocabulary."""

    def __init__(self, vocab: Sequence[str]) -> None:
        self.words = tuple(vocab)
        self._index = {w: i for i, w in enumerate(self.words)}
        # Suggestable ids in frequency order, and the same words sorted for prefix search.
        self._by_freq = [i for i in range(NUM_SPECIAL, len(self.words))
                         if _WORDLIKE.search(self.words[i])]
        pairs = sorted((self.words[i], i) for i in self._by_freq)
        self._sorted_words = [w for w, _ in pairs]
        self._sorted_ids = [i for _, i in pairs]

    def query(self, text: str) -> Query:
        """The model prefix and partial word of ``text`` (see the module docstring)."""
        norm = normalize(text)
        m = _PARTIAL.search(norm)
        partial = m.group(0) if m else None
        context = norm[: m.start()] if m else norm
        toks = tokens(context)
        for i in range(len(toks) - 1, -1, -1):
            if toks[i] in SENTENCE_END:
                toks = toks[i + 1 :]
                break
        while toks and toks[0] in PUNCTUATION:
            toks.pop(0)
        ids = [self._index.get(t, OOV) for t in toks]
        return Query((BOS, *ids), partial)

    def candidates(self, partial: str | None) -> list[int]:
        """Suggestable ids (starting with ``partial``, if given), in frequency order."""
        if partial is None:
            return self._by_freq
        found = self._with_prefix(partial)
        stripped = partial.lstrip("'")
        if not found and stripped and stripped != partial:
            found = self._with_prefix(stripped)
        return sorted(found)

    def _with_prefix(self, prefix: str) -> list[int]:
        lo = bisect.bisect_left(self._sorted_words, prefix)
        hi = bisect.bisect_left(self._sorted_words, prefix + "\U0010ffff", lo)
        return self._sorted_ids[lo:hi]

    def rank(self, query: Query, top_ids: np.ndarray, top_probs: np.ndarray,
             k: int) -> list[Suggestion]:
        """At most ``k`` suggestions: model-ranked candidates first, then by frequency."""
        allowed = self.candidates(query.partial)
        allowed_set = set(allowed) if query.partial is not None else None
        out: list[Suggestion] = []
        taken: set[int] = set()
        for i, p in sorted(zip(top_ids.tolist(), top_probs.tolist(), strict=True),
                           key=lambda ip: -ip[1]):
            if len(out) == k:
                return out
            if i < NUM_SPECIAL or i >= len(self.words) or i in taken:
                continue
            if (allowed_set is not None and i not in allowed_set) or \
                    not _WORDLIKE.search(self.words[i]):
                continue
            out.append(Suggestion(self.words[i], float(p)))
            taken.add(i)
        for i in allowed:
            if len(out) == k:
                break
            if i not in taken:
                out.append(Suggestion(self.words[i], None))
        return out
