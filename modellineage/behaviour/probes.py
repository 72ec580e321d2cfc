"""Behavioural probe sets: versioned JSON files, each item with the public source it was written from.

``fixtures/probes/behaviour/`` holds four sets (see its README.md):

* ``events.json`` — one dated event per month (2020-01 … 2024-12) as a cloze prompt in English and Korean,
  with the accepted answers: the knowledge-cutoff curve;
* ``refusal.json`` — benign-but-edgy and clearly disallowed *requests* (no answers shipped);
* ``continuation.json`` — neutral prompts (public-domain openings, everyday sentence starts);
* ``multilingual.json`` — sentence starts in seven languages.

These are the suite's own files, not a model folder's, so they are read directly; a malformed file is a
:class:`~modellineage.errors.CorruptCheckpoint` naming it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from modellineage.errors import CorruptCheckpoint, UnsupportedFormat

#: The probe sets bundled with the suite.
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "probes" / "behaviour"
SETS = ("events", "refusal", "continuation", "multilingual")
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class ProbeItem:
    """One prompt of a probe set. ``answers`` only for dated events; ``kind`` only for refusal prompts."""

    set: str
    id: str
    prompt: str
    lang: str
    source: str
    month: str | None = None
    answers: tuple[str, ...] = ()
    kind: str | None = None


@dataclass(frozen=True)
class ProbeSet:
    name: str
    version: int
    sha256: str
    items: tuple[ProbeItem, ...]

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "items": len(self.items)}


@dataclass(frozen=True)
class Probes:
    """Every probe set used by one measurement (their versions and SHA-256 go into the evidence)."""

    events: ProbeSet
    refusal: ProbeSet
    continuation: ProbeSet
    multilingual: ProbeSet

    def sets(self) -> tuple[ProbeSet, ...]:
        return (self.events, self.refusal, self.continuation, self.multilingual)

    def texts(self) -> tuple[str, ...]:
        """Every prompt once, in file order: the inputs of the next-token and representation comparisons."""
        seen: dict[str, None] = {}
        for s in (self.continuation, self.multilingual, self.events, self.refusal):
            for item in s.items:
                seen.setdefault(item.prompt, None)
        return tuple(seen)

    def limited(self, per_set: int) -> "Probes":
        """The first ``per_set`` items of each set (events: the first ``per_set`` months, both languages)."""
        months = sorted({i.month for i in self.events.items})[:per_set]
        events = tuple(i for i in self.events.items if i.month in months)
        return Probes(*(ProbeSet(s.name, s.version, s.sha256, items) for s, items in (
            (self.events, events), (self.refusal, self.refusal.items[:per_set]),
            (self.continuation, self.continuation.items[:per_set]),
            (self.multilingual, self.multilingual.items[:per_set]))))

    def as_dict(self) -> dict:
        return {s.name: s.as_dict() for s in self.sets()}


def _str(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise CorruptCheckpoint(f"{where}: must be a non-empty string")
    return value


def load_set(path: Path, name: str) -> ProbeSet:
    """Read one probe set; every item needs ``id``, ``prompt``, ``lang`` and ``source``."""
    try:
        raw = Path(path).read_bytes()
        doc = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise UnsupportedFormat(f"{path}: probe set {name!r} not found") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptCheckpoint(f"{path}: not a readable probe set ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list) or not isinstance(doc.get("version"), int):
        raise CorruptCheckpoint(f"{path}: a probe set is an object with an integer 'version' and a list 'items'")
    items, ids = [], set()
    for n, item in enumerate(doc["items"]):
        where = f"{path}: item {n}"
        if not isinstance(item, dict):
            raise CorruptCheckpoint(f"{where}: must be an object")
        iid = _str(item.get("id"), f"{where}.id")
        if iid in ids:
            raise CorruptCheckpoint(f"{where}: repeated id {iid!r}")
        ids.add(iid)
        month = item.get("month")
        if name == "events":
            if not isinstance(month, str) or not _MONTH.match(month):
                raise CorruptCheckpoint(f"{where}.month: must be 'YYYY-MM'")
            answers = item.get("answers")
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a for a in answers):
                raise CorruptCheckpoint(f"{where}.answers: must be a non-empty list of strings")
        items.append(ProbeItem(set=name, id=iid, prompt=_str(item.get("prompt"), f"{where}.prompt"),
                               lang=_str(item.get("lang"), f"{where}.lang"),
                               source=_str(item.get("source"), f"{where}.source"),
                               month=month if name == "events" else None,
                               answers=tuple(item.get("answers", ())) if name == "events" else (),
                               kind=item.get("kind") if name == "refusal" else None))
    if not items:
        raise CorruptCheckpoint(f"{path}: probe set holds no items")
    return ProbeSet(name, doc["version"], hashlib.sha256(raw).hexdigest(), tuple(items))


def load_probes(directory: Path | str = DEFAULT_DIR) -> Probes:
    """The four probe sets from ``directory`` (default: the bundled ``fixtures/probes/behaviour``)."""
    directory = Path(directory)
    return Probes(*(load_set(directory / f"{name}.json", name) for name in SETS))


def parse_month(text: str) -> tuple[int, int]:
    """``'2023-04'`` -> ``(2023, 4)``; anything else is a ValueError."""
    m = _MONTH.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not a month 'YYYY-MM'")
    return int(m.group(1)), int(m.group(2))
