"""A generated corpus of short, messy chat messages (the tests make their own corpora).

Seeded and deterministic: a small chat grammar over a few hundred words, with what real
messages hold: very short messages ("ok", "k"), abbreviations ("u", "gr8", "brb"), URLs,
e-mail addresses, numbers with separators, emoji (skin tones, joiners, flags) and
emoticons, MIXED case, non-ASCII words, and users with one line next to one with many.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SUBJECTS = ["i", "u", "we", "they", "my mum", "the team", "Tom", "Zoë", "my boss", "everyone"]
VERBS = ["need", "want", "love", "hate", "got", "saw", "made", "sent", "found", "lost",
         "bought", "fixed", "missed", "liked", "booked"]
OBJECTS = ["the tickets", "a pizza", "the car", "my phone", "the café", "that movie",
           "the report", "a new job", "the keys", "ur message", "the train", "dinner",
           "the übung", "coffee", "the pics"]
TAILS = ["today", "tonight", "tmrw", "asap", "lol", "again", "for real", "last night",
         "at work", "right now", "", "", ""]
SHORT = ["ok", "k", "lol", "omg", "brb", "yes", "no", "thx", "ty", "np", "gr8", "idk",
         "ok :)", "haha", "nope", "sure!", "LOL", "OK!!", "👍", "😂😂", "<3", "kk"]
EMOJI = ["😂", "👍🏽", "❤️", "👨‍👩‍👧", "🇫🇷", "🙏", "🔥", ":)", ":-(", ";p", ":D"]
EXTRAS = ["see https://example.com/page?id={n}", "mail me at user{n}@example.org",
          "it was {n}.50 or {n},000", "meet at 12:{n:02d}", "call {n} 555 0199",
          "привет друг", "日本 was great", "naïve façade", "WWW.EXAMPLE.NET/x rocks"]


def message(rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.25:
        return SHORT[rng.integers(len(SHORT))]
    n = int(rng.integers(1, 60))
    parts = [SUBJECTS[rng.integers(len(SUBJECTS))], VERBS[rng.integers(len(VERBS))],
             OBJECTS[rng.integers(len(OBJECTS))], TAILS[rng.integers(len(TAILS))]]
    text = " ".join(p for p in parts if p)
    if rng.random() < 0.3:
        text += " " + EXTRAS[rng.integers(len(EXTRAS))].format(n=n)
    if rng.random() < 0.3:
        text += " " + EMOJI[rng.integers(len(EMOJI))]
    if rng.random() < 0.2:
        text = text.upper()
    elif rng.random() < 0.5:
        text = text.capitalize()
    return text + ["", ".", "!", "?", "!!!", "..."][rng.integers(6)]


def messages(users: int, seed: int = 0, big_user_lines: int = 0) -> list[tuple[str, str]]:
    """``(user, text)`` rows: user 0 has one line, user 1 ``big_user_lines`` (if > 0), the
    others a heavy-tailed number of messages (1 to a few hundred)."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str]] = []
    for u in range(users):
        if u == 0:
            n = 1
        elif u == 1 and big_user_lines:
            n = big_user_lines
        else:
            n = int(min(300, 1 + rng.pareto(1.2) * 8))
        # spaces, non-ASCII and bare numbers (numeric ids in the JSONL) in names too
        name = f"Üser {u}" if u % 7 == 0 else str(u) if u % 3 == 0 else f"user-{u:04d}"
        rows += [(name, message(rng)) for _ in range(n)]
    return rows


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    """JSONL as real exports write it: a BOM, CRLF line ends, blank lines, numeric user
    ids, keys in another order, extra keys."""
    lines = []
    for i, (user, text) in enumerate(rows):
        uid: str | int = int(user) if user.isdigit() else user
        if i % 3 == 0:
            lines.append(json.dumps({"text": text, "user": uid, "ts": i}, ensure_ascii=i % 2 == 0))
        else:
            lines.append(json.dumps({"user": uid, "text": text}, ensure_ascii=False))
        if i % 50 == 0:
            lines.append("")
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    return path


def write_dir(path: Path, rows: list[tuple[str, str]]) -> Path:
    """One text file per user, one message per line."""
    path.mkdir(parents=True, exist_ok=True)
    per: dict[str, list[str]] = {}
    for user, text in rows:
        per.setdefault(user, []).append(text)
    for user, texts in per.items():
        (path / f"{user}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path
