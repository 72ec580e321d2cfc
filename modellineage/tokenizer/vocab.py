"""Every tokenizer format real models ship, read into one normalised ``Vocabulary``.

Formats and the library that reads each (no hand parsing where a library exists):

===============================  =====================================================  =========================
files                            format                                                 read with
===============================  =====================================================  =========================
``tokenizer.json``               fast tokenizer: BPE, Unigram, WordPiece                ``tokenizers``
``tokenizer.model`` (protobuf),  SentencePiece (BPE or Unigram)                         ``sentencepiece``
``*.model.v3`` (Mistral)
``tokenizer.model`` (text),      tiktoken rank file (cl100k, Qwen, Llama-3's original   ``tiktoken.load``
``*.tiktoken``                   ``tokenizer.model``) — told apart from SentencePiece
                                 by content, not by name
``vocab.json`` + ``merges.txt``  GPT-2 style byte-level BPE                             ``tokenizers`` (BPE)
``vocab.txt``                    WordPiece (BERT)                                       ``tokenizers`` (WordPiece)
``*.gguf``                       the vocabulary inside a GGUF file                      ``gguf``
``tekken*.json``                 Mistral's tekken (tiktoken ranks in JSON)              ``json`` + ``tiktoken``
===============================  =====================================================  =========================

A directory is read through its most complete file (``_PRIORITY``: a tokenizer.json wins over the
vocab.json + merges.txt that GPT-2, Qwen2 and RoBERTa repos ship beside it); its Hugging Face side files
(tokenizer_config.json, special_tokens_map.json, added_tokens.json) add special-token roles and added
tokens (``_with_side_files``). ``Vocabulary.files`` lists every file read, ``notes`` where roles came from.

Normalisation: every token becomes the byte sequence it stands for, so SentencePiece ``▁the``,
byte-level BPE ``Ġthe``, tiktoken ``b" the"`` and WordPiece word-initial ``the`` all become ``b" the"``,
and byte-fallback pieces ``<0x41>`` become ``b"A"``. WordPiece continuation pieces ``##ing`` become
``b"ing"`` (word-initial WordPiece pieces are taken to follow a space, the closest byte-level analogue;
a word-initial piece after punctuation, as in ``"(the"``, has no space in the text, so this vocabulary
normalisation is approximate for WordPiece). Encoding is exact: a WordPiece encoder returns the text
each token covers (``text_pieces``), so token boundaries sit at the text's own byte offsets.
Special and added tokens keep their literal UTF-8 text. The raw strings are kept too (tiktoken and
tekken tokens, which have no string form, are rendered in the GPT-2 byte-to-unicode alphabet, the form
their Hugging Face conversions use).

Merges are the file's own merge list where it has one (tokenizer.json BPE, merges.txt, GGUF gpt2);
for rank-ordered vocabularies (tiktoken, SentencePiece BPE, GGUF llama) they are derived from the ranks:
each multi-unit token's merge is the pair its own BPE run (restricted to lower ranks) ends with
(``derive_merges``: vectorised with numpy, exact). Unigram and WordPiece vocabularies have no merges.
"""

from __future__ import annotations

import fnmatch
import json
import operator
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from modellineage.errors import CorruptCheckpoint, Refused, UnsupportedFormat, describe
from modellineage.reading import confine
from modellineage.reading.boundary import (
    MAX_JSON_BYTES,
    EncodeClock,
    MAX_SENTENCEPIECE_BYTES,
    check_count,
    guard,
    loads_json,
    quote,
    read_bytes,
    read_json,
    read_text,
    rust_call,
)
from modellineage.reading.sources import TOKENIZER_SIDE_FILES

# The pre-tokenisation regex used to encode with a bare tiktoken rank file (the file carries none):
# cl100k_base's, which Llama-3 and Qwen patterns refine (recorded in Vocabulary.notes).
CL100K_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                  r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
SPECIAL_ROLES = ("bos", "eos", "pad", "unk")
# Priority when a directory holds several tokenizer files: the most complete description first (glob
# patterns; Mistral ships tekken.json and tokenizer.model.v3 / .v7 / .v7m1 beside or instead of the others).
_PRIORITY = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "*.tiktoken",
             "tekken*.json", "*.model.v[0-9]*", "vocab.json", "vocab.txt", "*.gguf")
_SIDE_FILES = TOKENIZER_SIDE_FILES  # files that hold no vocabulary of their own (modellineage.reading.sources)


# ----------------------------------------------------------------------------------------- record
@dataclass(frozen=True)
class Vocabulary:
    """One tokenizer's vocabulary, normalised to bytes, with where it came from.

    ``ids``, ``raw`` and ``normalised`` are parallel tuples sorted by id. ``special_ids`` are control,
    unknown and special added tokens. ``merges`` are (left, right) byte pairs in merge order, or None
    when the model has no merges (Unigram, WordPiece).
    """

    path: Path                      # the file that was read
    format: str                     # e.g. "tokenizer.json", "sentencepiece", "tiktoken", "gguf"
    model_type: str                 # "BPE" | "Unigram" | "WordPiece"
    ids: tuple[int, ...]
    raw: tuple[str, ...]
    normalised: tuple[bytes, ...]
    special_ids: frozenset = frozenset()
    special_tokens: tuple[tuple[str, str | None], ...] = ()   # (role, raw string) for bos/eos/pad/unk
    added_tokens: tuple[tuple[int, str, bool], ...] = ()      # (id, raw, special) beyond the base model
    merges_origin: str = "none"     # "file" | "derived from ranks" | "none"
    files: tuple[Path, ...] = ()    # every file read (the main one first)
    notes: tuple[str, ...] = ()
    encoder: Callable[[str], list[bytes]] | None = field(default=None, compare=False, repr=False)
    # Merges are read or derived on first use (deriving 250k ranks takes ~0.5 s); see ``merges``.
    merges_loader: Callable[[], tuple] | None = field(default=None, compare=False, repr=False)
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def merges(self) -> tuple[tuple[bytes, bytes], ...] | None:
        """(left, right) byte pairs in merge order; None for models without merges (Unigram, WordPiece)."""
        if self.merges_loader is None:
            return None
        if "merges" not in self._cache:
            with guard(self.path, "merge rules cannot be read"):
                self._cache["merges"] = tuple(self.merges_loader())
        return self._cache["merges"]


    def __len__(self) -> int:
        return len(self.ids)

    @property
    def size(self) -> int:
        return len(self.ids)

    def encode(self, text: str) -> list[bytes]:
        """The text's pieces as normalised byte strings (no special tokens added)."""
        if self.encoder is None:
            raise UnsupportedFormat(f"{self.path}: cannot encode text with a {self.format} vocabulary "
                                    f"({'; '.join(self.notes) or 'no encoder for this format'})")
        with rust_call(self.path, "the tokenizer failed to encode a text"):
            return self.encoder(text)

    def id_of_bytes(self) -> dict[bytes, int]:
        """Normalised bytes -> lowest id carrying them, in id order (computed once)."""
        if "id_of_bytes" not in self._cache:
            self._cache["id_of_bytes"] = first_ids(self.normalised, self.ids)
        return self._cache["id_of_bytes"]

    def id_of_raw(self) -> dict[str, int]:
        """Raw token string -> lowest id carrying it, in id order (computed once)."""
        if "id_of_raw" not in self._cache:
            self._cache["id_of_raw"] = first_ids(self.raw, self.ids)
        return self._cache["id_of_raw"]

    def as_dict(self) -> dict:
        return {
            "file": str(self.path), "files": [str(p) for p in self.files], "format": self.format,
            "model_type": self.model_type, "size": self.size, "distinct_normalised": len(set(self.normalised)),
            "id_range": [self.ids[0], self.ids[-1]] if self.ids else None,
            "special_tokens": {role: raw for role, raw in self.special_tokens},
            "special_count": len(self.special_ids), "added_tokens": len(self.added_tokens),
            "merges": None if self.merges is None else len(self.merges), "merges_origin": self.merges_origin,
            "can_encode": self.encoder is not None, "notes": list(self.notes),
        }


# ----------------------------------------------------------------------------------------- helpers
def first_ids(keys: Sequence, ids: Sequence[int]) -> dict:
    """key -> the id beside its first occurrence, in order of first occurrence (e.g. token -> lowest id)."""
    found = dict(zip(keys, ids))
    if len(found) == len(ids):  # no key repeats (the usual case): built in C
        return found
    found = {}
    for key, i in zip(keys, ids):
        found.setdefault(key, i)
    return found


@lru_cache(maxsize=1)
def byte_level_maps() -> tuple[dict[int, str], dict[str, int]]:
    """GPT-2's byte <-> printable unicode alphabet (byte-level BPE's string form of bytes)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    to_char = {b: chr(c) for b, c in zip(printable, chars)}
    return to_char, {c: b for b, c in to_char.items()}


def bytes_to_byte_level(data: bytes) -> str:
    """b' the' -> 'Ġthe'."""
    return data.decode("latin-1").translate(byte_level_maps()[0])


def byte_level_to_bytes(token: str) -> bytes | None:
    """Ġthe -> b' the'; None when a character is outside the byte-level alphabet."""
    to_byte = byte_level_maps()[1]
    try:
        return bytes(to_byte[c] for c in token)
    except KeyError:
        return None


def metaspace_to_bytes(piece: str) -> bytes:
    """SentencePiece piece -> bytes: ▁ is a space, <0xNN> is the byte NN."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    return piece.replace("\u2581", " ").encode("utf-8")


def wordpiece_to_bytes(piece: str, prefix: str = "##") -> bytes:
    if prefix and piece.startswith(prefix) and len(piece) > len(prefix):
        return piece[len(prefix):].encode("utf-8")
    return b" " + piece.encode("utf-8")


def text_pieces(text: str, offsets: Iterable[tuple[int, int]]) -> list[bytes]:
    """The text each token covers (character offsets), with the whitespace before it, as UTF-8.

    For WordPiece, whose token strings carry no spaces: 'Hello, world' -> [b'Hello', b',', b' world'],
    the byte-level layout (a space belongs to the piece after it, punctuation joins no space), so token
    boundaries sit at the same byte offsets as a byte-level tokenizer's. Whitespace after the last
    token is not a piece (WordPiece emits none); tokens sharing one character (a character the
    normaliser expanded) are one piece.
    """
    out: list[bytes] = []
    end = 0
    for start, stop in offsets:
        start = max(start, end)
        if stop <= start:
            continue
        out.append(text[end:stop].encode("utf-8"))
        end = stop
    return out


def _fail(path: Path, what: str, exc: BaseException | None = None) -> CorruptCheckpoint:
    detail = f" ({describe(exc)})" if exc is not None else ""  # parsers quote the file: an excerpt only
    return CorruptCheckpoint(f"{path}: {what}{detail}")


#: Largest token id accepted (ids are compared and offset as int64 arrays; real ids are < 2**21).
MAX_TOKEN_ID = 2**31 - 1
#: Most units (bytes or characters) all tokens of one vocabulary may hold together when merge rules are
#: derived from ranks (the derivation keeps ~5 int64 arrays of that length). Real vocabularies hold < 3M
#: (o200k_base: ~1.4M bytes); a safety limit, not a threshold of judgement.
MAX_MERGE_UNITS = 16_000_000


def _checked(path: Path, ids: Sequence[int], raw: Sequence[str], normalised: Sequence[bytes]) -> tuple:
    if not ids:
        raise _fail(path, "the vocabulary is empty")
    check_count(path, len(ids), "tokens")
    bad = next((i for i in ids if not (type(i) is int and 0 <= i <= MAX_TOKEN_ID)), None)
    if bad is not None:
        raise _fail(path, f"token id {quote(bad)} is not an integer in [0, {MAX_TOKEN_ID}]")
    if all(map(operator.lt, ids[:-1], ids[1:])):  # already in id order (the usual case)
        return tuple(ids), tuple(raw), tuple(normalised)
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return (tuple(ids[i] for i in order), tuple(raw[i] for i in order), tuple(normalised[i] for i in order))


# ----------------------------------------------------------------------------------------- merges
def derive_merges(units_by_rank: Sequence, mergeable: Iterable[bool] | None = None) -> tuple[list[tuple], int]:
    """Merge rules implied by a rank-ordered BPE vocabulary.

    ``units_by_rank`` are tokens (bytes, or str for character-level SentencePiece) in rank order. Each
    token of two or more units is the product of one merge: the pair left when BPE runs over the token
    using only lower ranks (single units are the alphabet, always available). This reproduces the merge
    lists shipped in tokenizer.json files exactly (checked on DeepSeek's: 127,741 of 127,741). Returns
    the merges in rank order and how many tokens no lower-rank pair sequence produces (irregular; skipped).

    The BPE runs are vectorised: every token of one length band advances one merge per numpy step
    (leftmost lowest-ranked pair first, as tiktoken's and the tokenizers library's BPE do). Pieces are
    looked up by a hash of their units, and every merge taken is checked unit by unit against the token
    the hash named, so a hash collision can only send that token to the plain Python BPE, never change
    a result. Tokens longer than ``_VECTOR_MAX_UNITS`` units run in plain Python too.
    """
    units = list(units_by_rank)
    total = sum(map(len, units))
    if total > MAX_MERGE_UNITS:
        raise ValueError(f"tokens hold {total:,} units, above MAX_MERGE_UNITS = {MAX_MERGE_UNITS:,}")
    flags = None if mergeable is None else np.fromiter(mergeable, dtype=bool, count=len(units))
    split = _bpe_split_points(units, flags)
    fallback = np.flatnonzero(split == _FALLBACK) if split is not None else None
    if split is None or len(fallback):
        rank: dict = {}
        for r, tok in enumerate(units):
            rank.setdefault(tok, r)
        if split is None:  # two distinct tokens share a hash: every token runs through the plain BPE
            split = np.array([0 if len(tok) < 2 or (flags is not None and not flags[r]) or rank[tok] != r
                              else _FALLBACK for r, tok in enumerate(units)], dtype=np.int64)
            fallback = np.flatnonzero(split == _FALLBACK)
        for r in fallback.tolist():
            tok = units[r]
            pair = (tok[:1], tok[1:]) if len(tok) == 2 else _bpe_last_pair(tok, rank, r)
            split[r] = _IRREGULAR if pair is None else len(pair[0])
    cut = split.tolist()
    merges = [(tok[:k], tok[k:]) for tok, k in zip(units, cut) if k > 0]
    return merges, cut.count(_IRREGULAR)


_IRREGULAR, _FALLBACK = -1, -2          # split-point codes (a real split point is >= 1)
_VECTOR_MAX_UNITS = 256                 # longer tokens (rare: whitespace and punctuation runs) run in Python
_LENGTH_BANDS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 20, 24, 32, 48, 64, 96, 128, 192, _VECTOR_MAX_UNITS)
_HASH_BASE = 0x100000001B3              # odd, so invertible modulo 2**64
_HASH_LENGTH = 0x9E3779B97F4A7C15       # mixes a piece's length into its key
_HASH_SLOT = 0xD6E8FEB86659FD93         # odd multiplier: key -> table slot (top bits), a bijection
_NONE = np.iinfo(np.int64).max          # rank of a piece that is no token


class _Pieces:
    """Every token's units in one array, and rank lookup of any piece of a token.

    Pieces are keyed by a polynomial hash of their units (modulo 2**64, so independent of where the
    piece sits) mixed with their length, and looked up in an open-addressing table (linear probing).
    A key names at most one token: ``collision`` says when two distinct tokens share one. Two-byte
    pieces, the most looked up, come from a dense table instead (exact, no hash).
    """

    def __init__(self, units: list):
        if isinstance(units[0], bytes):
            self.buf = np.frombuffer(b"".join(units), dtype=np.uint8)
        else:  # SentencePiece pieces: one code point per unit
            self.buf = np.frombuffer("".join(units).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        self.lengths = np.fromiter(map(len, units), dtype=np.int64, count=len(units))
        self.offsets = np.zeros(len(units) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.offsets[1:])
        n = len(self.buf)
        with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
            inverse = np.uint64(pow(_HASH_BASE, -1, 1 << 64))
            self.powers = np.ones(n + 1, dtype=np.uint64)
            self.powers[1:] = np.cumprod(np.full(n, _HASH_BASE, dtype=np.uint64))
            inverse_powers = np.ones(max(n, 1), dtype=np.uint64)
            inverse_powers[1:] = np.cumprod(np.full(max(n - 1, 0), inverse, dtype=np.uint64))
            self.prefix = np.zeros(n + 1, dtype=np.uint64)
            np.cumsum((self.buf.astype(np.uint64) + np.uint64(1)) * inverse_powers[:n], out=self.prefix[1:])
            keys = self.keys(self.offsets[:-1], self.offsets[1:])
            mixed = keys * np.uint64(_HASH_SLOT)
        # Sorting by the mixed key sorts by slot and puts equal keys side by side.
        order = np.argsort(mixed, kind="stable")
        mixed = mixed[order]
        same = np.flatnonzero(mixed[1:] == mixed[:-1])
        self.first = np.ones(len(units), dtype=bool)   # each distinct token at its lowest rank
        self.collision = False
        for i in same.tolist():  # equal keys: a repeated token (kept once), or a hash collision
            a, b = int(order[i]), int(order[i + 1])
            if units[a] == units[b]:
                self.first[max(a, b)] = False
            else:
                self.collision = True
        keep = self.first[order]
        order, mixed = order[keep], mixed[keep]
        self.bits = max(int(4 * len(order)).bit_length(), 4)           # load factor <= 1/4
        slot = (mixed >> np.uint64(64 - self.bits)).astype(np.int64)
        at = np.arange(len(slot))
        position = np.maximum.accumulate(slot - at) + at if len(slot) else slot  # linear probing, in slot order
        size = (1 << self.bits) + len(slot) + 1                        # room to run past the last slot
        self.table_keys = np.zeros(size, dtype=np.uint64)
        self.table_ranks = np.full(size, -1, dtype=np.int64)           # -1: empty
        self.table_keys[position] = keys[order]
        self.table_ranks[position] = order
        self.pairs = None
        if self.buf.dtype == np.uint8:
            two = np.flatnonzero(self.first & (self.lengths == 2))[::-1]  # lowest rank written last
            self.pairs = np.full(1 << 16, _NONE, dtype=np.int64)
            start = self.offsets[two]
            self.pairs[(self.buf[start].astype(np.int64) << 8) | self.buf[start + 1]] = two

    def keys(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Hash of buf[start:end] (independent of where it sits), mixed with its length."""
        with np.errstate(over="ignore"):
            h = (self.prefix[end] - self.prefix[start]) * self.powers[np.maximum(end - 1, 0)]
            return h ^ ((end - start).astype(np.uint64) * np.uint64(_HASH_LENGTH))

    def rank(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """The rank the key of each piece names, or _NONE; to be checked with ``same`` before use."""
        k = self.keys(start, end)
        with np.errstate(over="ignore"):
            slot = ((k * np.uint64(_HASH_SLOT)) >> np.uint64(64 - self.bits)).astype(np.int64)
        out = np.full(len(k), _NONE, dtype=np.int64)
        probe = np.arange(len(k))
        while len(probe):
            at = slot[probe]
            found = self.table_ranks[at]
            hit = (found >= 0) & (self.table_keys[at] == k[probe])
            out[probe[hit]] = found[hit]
            probe = probe[(found >= 0) & ~hit]  # occupied by another key: try the next slot
            slot[probe] += 1
        return out

    def pair_rank(self, start: np.ndarray) -> np.ndarray:
        """Rank of each two-unit piece buf[start:start+2] (exact for bytes; hashed for code points)."""
        if self.pairs is None:
            return self.rank(start, start + 2)
        return self.pairs[(self.buf[start].astype(np.int64) << 8) | self.buf[start + 1]]

    def same(self, start: np.ndarray, end: np.ndarray, ranks: np.ndarray, width: int) -> np.ndarray:
        """buf[start:end] equals token ``ranks`` unit for unit (pieces at most ``width`` long)."""
        length = end - start
        ok = self.lengths[ranks] == length
        check = np.flatnonzero(ok & (length > 2)) if self.pairs is not None else np.flatnonzero(ok)
        if len(check):  # two-byte pieces were looked up exactly
            length, start, origin = length[check], start[check], self.offsets[ranks[check]]
            j = np.arange(width)
            inside = j[None, :] < length[:, None]
            a = np.where(inside, start[:, None] + j[None, :], 0)
            b = np.where(inside, origin[:, None] + j[None, :], 0)
            ok[check] = ~np.any((self.buf[a] != self.buf[b]) & inside, axis=1)
        return ok


def _bpe_split_points(units: list, flags: np.ndarray | None) -> np.ndarray | None:
    """Per rank: where its merge splits it (k >= 1), 0 (no merge), _IRREGULAR, or _FALLBACK (run in Python).

    ``flags`` marks the tokens whose merge is wanted (None: all). None when two distinct tokens share a
    hash key (the caller then runs the plain BPE for every token).
    """
    split = np.zeros(len(units), dtype=np.int64)
    if not units:
        return split
    pieces = _Pieces(units)
    if pieces.collision:
        return None
    lengths, offsets = pieces.lengths, pieces.offsets
    todo = pieces.first & (lengths >= 2)
    if flags is not None:
        todo &= flags
    split[todo & (lengths == 2)] = 1
    split[todo & (lengths > _VECTOR_MAX_UNITS)] = _FALLBACK
    low = 3
    for width in _LENGTH_BANDS:
        rows = np.flatnonzero(todo & (lengths >= low) & (lengths <= width))
        low = width + 1
        if len(rows):
            split[rows] = _bpe_band(pieces, rows, offsets[rows], lengths[rows], width)
    return split


def _bpe_band(pieces: _Pieces, ranks: np.ndarray, base: np.ndarray, n: np.ndarray, width: int) -> np.ndarray:
    """Restricted BPE of tokens of at most ``width`` units, all at once.

    Boundaries 0..n between units form a linked list (nxt/prv) of the ones still standing; ``pair[:, k-1]``
    is the rank of the piece spanning boundary k (from the boundary before it to the one after it).
    """
    rows = len(ranks)
    col = np.arange(width + 1)
    nxt = np.broadcast_to(col + 1, (rows, width + 1)).copy()
    prv = np.broadcast_to(col - 1, (rows, width + 1)).copy()
    pair = np.full((rows, width - 1), _NONE, dtype=np.int64)
    r_i, k_i = np.nonzero(np.arange(1, width)[None, :] < n[:, None])
    pair[r_i, k_i] = pieces.pair_rank(base[r_i] + k_i)
    parts = n.copy()
    out = np.zeros(rows, dtype=np.int64)
    active = np.arange(rows)
    while len(active):
        at = np.argmin(pair[active], axis=1)        # leftmost lowest-ranked pair
        best = pair[active, at]
        stuck = best >= ranks[active]               # only ranks below the token's own may merge
        out[active[stuck]] = _IRREGULAR
        go, k, best = active[~stuck], at[~stuck] + 1, best[~stuck]
        s, e = prv[go, k], nxt[go, k]
        exact = pieces.same(base[go] + s, base[go] + e, best, width)
        if not exact.all():                         # a hash collision: that token runs in Python
            out[go[~exact]] = _FALLBACK
            go, k, s, e = go[exact], k[exact], s[exact], e[exact]
        nxt[go, s], prv[go, e] = e, s               # boundary k falls: pieces s..k and k..e merge
        pair[go, k - 1] = _NONE
        parts[go] -= 1
        left = s > 0
        g = go[left]
        pair[g, s[left] - 1] = pieces.rank(base[g] + prv[g, s[left]], base[g] + e[left])
        right = e < n[go]
        g = go[right]
        pair[g, e[right] - 1] = pieces.rank(base[g] + s[right], base[g] + nxt[g, e[right]])
        finished = parts[go] == 2
        out[go[finished]] = nxt[go[finished], 0]    # the one boundary left is the merge's split point
        active = go[~finished]
    return out


def _bpe_last_pair(tok, rank: dict, limit: int):
    """Run BPE over ``tok`` with ranks below ``limit``; the two parts left, or None (plain Python)."""
    get = rank.get
    parts = [tok[i:i + 1] for i in range(len(tok))]
    ranks = []
    for i in range(len(parts) - 1):
        r = get(parts[i] + parts[i + 1])
        ranks.append(r if r is not None and r < limit else limit)
    while len(parts) > 2:
        best = min(ranks)
        if best >= limit:
            return None
        i = ranks.index(best)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
        del ranks[i]
        if i > 0:
            r = get(parts[i - 1] + parts[i])
            ranks[i - 1] = r if r is not None and r < limit else limit
        if i < len(parts) - 1:
            r = get(parts[i] + parts[i + 1])
            ranks[i] = r if r is not None and r < limit else limit
    return parts[0], parts[1]


# ----------------------------------------------------------------------------------------- loaders
def load_vocabulary(path: Path | str) -> Vocabulary:
    """Read one tokenizer file (or a directory: the most complete tokenizer file in it).

    Raises:
        UnsupportedFormat: no tokenizer file, or a format this module does not read.
        CorruptCheckpoint: the file is of a known kind but broken (names the file and the defect).
    """
    from modellineage.reading.sources import list_folder

    path = Path(path)
    if path.is_dir():  # listed and vetted as a model source's folder is (modellineage.reading.confine)
        files, refused = list_folder(path)
        refused = [r for r in refused if r.role == "tokenizer"]
        if refused:
            raise Refused(f"{path}: " + "; ".join(r.message for r in refused))
        return load_from_files(files, where=path)
    if not path.is_file():
        raise UnsupportedFormat(f"{path}: no such tokenizer file")
    files = [path]
    merges = path.parent / "merges.txt"
    if path.name == "vocab.json" and (merges.exists() or merges.is_symlink()):  # the pair is one tokenizer
        refusal = confine.vet(merges, confine.bounds_for(path.parent), entry=merges.name, role="tokenizer")
        if refusal is not None:
            raise Refused(f"{path.parent}: {refusal.message}")
        files.append(merges)
    return load_from_files(files, where=path.parent, explicit=path)


def load_from_files(files: Sequence[Path], *, where: Path | None = None, explicit: Path | None = None) -> Vocabulary:
    """The vocabulary described by a set of tokenizer files (e.g. ``ModelSource.tokenizer_files``)."""
    files = [Path(p) for p in files]
    by_name = {p.name: p for p in files}
    main = explicit or _pick_main(files)
    if main is None:
        raise UnsupportedFormat(f"{where or 'tokenizer files'}: no tokenizer vocabulary file "
                                f"(looked for {', '.join(_PRIORITY)}; found {', '.join(sorted(by_name)) or 'none'})")
    side = {n: by_name[n] for n in _SIDE_FILES if n in by_name and by_name[n] != main}
    with guard(main, "cannot read the tokenizer file"):
        vocab, implied = _load_main(main, side)
    with guard(main, "cannot apply the tokenizer side files"):
        return _with_side_files(vocab, side, implied)


def _load_main(main: Path, side: dict[str, Path]) -> tuple[Vocabulary, dict[str, str]]:
    name = main.name
    implied: dict[str, str] = {}
    if name.endswith(".gguf"):
        vocab = _load_gguf(main)
    elif name.endswith(".tiktoken"):
        vocab = _load_tiktoken(main)
    elif name == "vocab.json":  # beside a tokenizer.json it is only read when the tokenizer.json is not
        if "merges.txt" not in side:
            raise UnsupportedFormat(f"{main}: a GPT-2 style vocab.json needs merges.txt beside it")
        vocab = _load_vocab_merges(main, side["merges.txt"])
    elif name.endswith(".json"):
        vocab, implied = _load_json_tokenizer(main)
    elif name.endswith(".txt"):
        vocab = _load_wordpiece_txt(main)
    else:  # tokenizer.model, spiece.model, *.model.v3, ...: SentencePiece protobuf or a tiktoken file
        vocab = _load_tiktoken(main) if _looks_like_tiktoken(main) else _load_sentencepiece(main)
    return vocab, implied


def _pick_main(files: Sequence[Path]) -> Path | None:
    for pattern in _PRIORITY:
        for p in sorted(files):
            if fnmatch.fnmatchcase(p.name, pattern):
                return p
    return None


def _looks_like_tiktoken(path: Path) -> bool:
    """A tiktoken rank file is text lines `<base64> <rank>`; SentencePiece is a binary protobuf."""
    with confine.open_file(path) as fh:
        head = fh.read(4096)
    lines = head.split(b"\n")[:8]
    lines = [ln for ln in lines[:-1] if ln] or lines[:1]
    return bool(lines) and all(re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+", ln.strip()) for ln in lines)


def _load_tiktoken(path: Path) -> Vocabulary:
    ranks = _tiktoken_ranks(path)
    if not ranks:
        raise _fail(path, "the vocabulary is empty (no ranks)")
    return _from_ranks(path, ranks, "tiktoken", CL100K_PATTERN,
                       notes=("encoding uses the cl100k_base pre-tokenisation pattern (a rank file carries none)",))


def _tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """A tiktoken rank file, parsed as ``tiktoken.load.load_tiktoken_bpe`` does (``<base64> <rank>`` lines),
    from bytes read through :mod:`modellineage.reading.boundary` (bounded; opened by :mod:`modellineage.reading.confine`).

    Not with that function: it opens the path itself, caches files under the temp directory keyed by their
    path (so it could return a stale or foreign copy of a path, and copies a hostile file there), and its
    error message quotes the whole offending line.
    """
    import base64
    import binascii

    data = read_bytes(path, "tiktoken rank file")
    check_count(path, data.count(b"\n"), "lines")
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(data.splitlines(), 1):
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or len(parts[1]) > 10:
            raise _fail(path, f"not a valid tiktoken rank file: line {number} is not '<base64> <rank>'")
        try:
            ranks[base64.b64decode(parts[0], validate=True)] = int(parts[1])
        except (binascii.Error, ValueError):
            raise _fail(path, f"not a valid tiktoken rank file: line {number} holds no valid base64 token") from None
    return ranks


def _from_ranks(path: Path, ranks: dict[bytes, int], fmt: str, pattern: str, *, specials: dict[str, int] | None = None,
                notes: tuple[str, ...] = (), id_offset: int = 0, roles: tuple = ()) -> Vocabulary:
    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in by_rank]
    ids = [r + id_offset for _, r in by_rank]
    table = byte_level_maps()[0]
    raw = [t.decode("latin-1").translate(table) for t in tokens]
    normalised = list(tokens)
    special_ids = set()
    for text, i in sorted((specials or {}).items(), key=lambda kv: kv[1]):
        ids.append(i)
        raw.append(text)
        normalised.append(text.encode("utf-8"))
        special_ids.add(i)
    ids_t, raw_t, norm_t = _checked(path, ids, raw, normalised)
    if len(set(ids_t)) != len(ids_t):
        raise _fail(path, "two tokens share one rank")
    encoder = _tiktoken_encoder(path, ranks, pattern)

    def merges() -> list:
        return derive_merges(tokens)[0]

    return Vocabulary(path=path, format=fmt, model_type="BPE", ids=ids_t, raw=raw_t, normalised=norm_t,
                      special_ids=frozenset(special_ids), special_tokens=roles, merges_loader=merges,
                      merges_origin="derived from ranks", files=(path,), notes=notes, encoder=encoder)


def _tiktoken_encoder(path: Path, ranks: dict[bytes, int], pattern: str) -> Callable[[str], list[bytes]] | None:
    import tiktoken

    try:
        enc = tiktoken.Encoding(name=f"modellineage:{path.name}", pat_str=pattern, mergeable_ranks=ranks,
                                special_tokens={})
    except Exception as exc:  # tiktoken rejects rank sets it cannot encode with (e.g. gaps)
        note = f"tiktoken refused the ranks for encoding ({describe(exc)})"
        raise _fail(path, note) from None
    decode = enc.decode_single_token_bytes
    return lambda text: [decode(t) for t in enc.encode_ordinary(text)]


def _load_tekken(path: Path, data: dict) -> Vocabulary:
    """Mistral's tekken JSON: tiktoken ranks (base64) after `default_num_special_tokens` control ids."""
    import base64

    check_count(path, len(data["vocab"]), "tokens")
    check_count(path, len(data.get("special_tokens") or ()), "special tokens")
    with guard(path, "not a valid tekken tokenizer JSON"):
        config = data["config"]
        n_special = _tekken_int(config.get("default_num_special_tokens", 0))
        vocab_size = _tekken_int(config.get("default_vocab_size", n_special + len(data["vocab"])))
        kept = max(vocab_size - n_special, 0)
        ranks = {base64.b64decode(_tekken_str(e["token_bytes"]), validate=True): _tekken_int(e["rank"])
                 for e in data["vocab"][:kept]}
        specials = {}
        for i, e in enumerate(data.get("special_tokens") or []):
            specials[_tekken_str(e["token_str"])] = _tekken_int(e.get("rank", i))
        pattern = _tekken_str(config["pattern"])
    check_count(path, n_special, "control ids (default_num_special_tokens)")
    if not specials:
        specials = {f"<SPECIAL_{i}>": i for i in range(n_special)}
    note = (f"tekken: {n_special} control ids first, then the first {kept} of {len(data['vocab'])} ranks "
            f"(default_vocab_size {vocab_size})",)
    # mistral_common finds bos/eos/unk/pad of a tekken file by these control-token names (SpecialTokens).
    roles = tuple((role, text) for role, text in (("bos", "<s>"), ("eos", "</s>"), ("pad", "<pad>"), ("unk", "<unk>"))
                  if text in specials)
    return _from_ranks(path, ranks, "tekken", pattern, specials=specials, notes=note, id_offset=n_special,
                       roles=roles)


def _tekken_int(value) -> int:
    if type(value) is not int or not 0 <= value <= MAX_TOKEN_ID:
        raise ValueError(f"expected an id, found {quote(value, 30)}")
    return value


def _tekken_str(value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, found {type(value).__name__}")
    return value


def _load_json_tokenizer(path: Path) -> tuple[Vocabulary, dict[str, str]]:
    """A tokenizer.json (or tekken JSON), and the bos/eos its post-processor implies (see _template_roles)."""
    text = read_text(path, "tokenizer JSON", limit=MAX_JSON_BYTES)
    data = loads_json(text, path, "tokenizer JSON", max_depth=None)
    if "config" in data and "vocab" in data and isinstance(data["vocab"], list):
        return _load_tekken(path, data), {}
    if "model" not in data:
        raise UnsupportedFormat(f"{path}: JSON without a 'model' (not a tokenizer.json)")
    model = data.get("model") or {}
    if not isinstance(model, dict):
        raise _fail(path, "'model' is not a JSON object")
    # Counted before the tokenizers library allocates for them (~0.4 GiB per million entries).
    for key, what in (("vocab", "tokens"), ("merges", "merge rules")):
        if isinstance(model.get(key), (list, dict)):
            check_count(path, len(model[key]), what)
    if isinstance(data.get("added_tokens"), list):
        check_count(path, len(data["added_tokens"]), "added tokens")
    from tokenizers import Tokenizer

    # A panic in the Rust side (pyo3's PanicException, a BaseException) is caught by the guard too.
    with rust_call(path, "the tokenizers library cannot read this tokenizer.json"):
        tok = Tokenizer.from_str(text)
    del text
    mtype = model.get("type") or _infer_model_type(model)
    style = _json_style(data, mtype)
    vocab = tok.get_vocab(with_added_tokens=True)
    if not vocab:
        raise _fail(path, "the vocabulary is empty")
    added = tok.get_added_tokens_decoder()
    prefix = model.get("continuing_subword_prefix") or "##"
    ids, raw, norm = [], [], []
    for token, i in vocab.items():
        ids.append(i)
        raw.append(token)
        norm.append(token.encode("utf-8") if i in added else _normalise(token, style, prefix))
    ids_t, raw_t, norm_t = _checked(path, ids, raw, norm)
    special_ids = frozenset(i for i, a in added.items() if a.special)
    added_t = tuple((i, a.content, bool(a.special)) for i, a in sorted(added.items()))
    loader, origin = None, "none"
    if mtype == "BPE":
        rules = model.get("merges") or []
        loader, origin = (lambda: _json_merges(path, rules, style)), "file"
    notes = [f"tokens read as {style}"]

    clock = EncodeClock(path)  # its own regexes: bounded in wall time
    if style == "wordpiece":
        notes.append("pieces are the text each token covers")

        def encoder(s: str) -> list[bytes]:
            return text_pieces(s, clock.encode(tok, s, add_special_tokens=False).offsets)
    else:
        def encoder(s: str) -> list[bytes]:
            return [_normalise(t, style, prefix) for t in clock.encode(tok, s, add_special_tokens=False).tokens]

    vocab = Vocabulary(path=path, format="tokenizer.json", model_type=mtype, ids=ids_t, raw=raw_t,
                       normalised=norm_t, special_ids=special_ids, special_tokens=_json_roles(data, model, mtype),
                       added_tokens=added_t, merges_loader=loader, merges_origin=origin, files=(path,),
                       notes=tuple(notes), encoder=encoder)
    return vocab, _template_roles(data.get("post_processor"))


def _json_roles(data: dict, model: dict, mtype: str) -> tuple[tuple[str, str], ...]:
    """Roles a tokenizer.json states itself: the model's unk token and the padding's pad token."""
    roles = []
    unk = model.get("unk_token")
    if mtype == "Unigram" and isinstance(model.get("unk_id"), int) and isinstance(model.get("vocab"), list):
        i = model["unk_id"]
        unk = model["vocab"][i][0] if 0 <= i < len(model["vocab"]) else None
    if isinstance(unk, str):
        roles.append(("unk", unk))
    padding = data.get("padding")
    if isinstance(padding, dict) and isinstance(padding.get("pad_token"), str):
        roles.append(("pad", padding["pad_token"]))
    return tuple(roles)


def _template_roles(processor) -> dict[str, str]:
    """bos/eos a post-processor adds around a single sequence (the token before and after it).

    TemplateProcessing ``[<s>, $A, </s>]``, RobertaProcessing / BertProcessing ``cls``/``sep``, or the
    first of a Sequence of processors that says. Weaker than a configuration file's explicit roles.
    """
    if not isinstance(processor, dict):
        return {}
    kind = processor.get("type")
    if kind == "Sequence":
        for inner in processor.get("processors") or []:
            found = _template_roles(inner)
            if found:
                return found
        return {}
    if kind in ("RobertaProcessing", "BertProcessing"):
        out = {}
        for role, key in (("bos", "cls"), ("eos", "sep")):
            value = processor.get(key)
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
                out[role] = value[0]
        return out
    if kind != "TemplateProcessing":
        return {}
    items = processor.get("single") or []
    at = next((i for i, item in enumerate(items) if isinstance(item, dict) and "Sequence" in item), None)
    if at is None:
        return {}

    def special(item) -> str | None:
        token = item.get("SpecialToken") if isinstance(item, dict) else None
        return token.get("id") if isinstance(token, dict) and isinstance(token.get("id"), str) else None

    out = {}
    if at > 0 and special(items[at - 1]):
        out["bos"] = special(items[at - 1])
    if at + 1 < len(items) and special(items[at + 1]):
        out["eos"] = special(items[at + 1])
    return out


def _infer_model_type(model: dict) -> str:
    if "merges" in model:
        return "BPE"
    if isinstance(model.get("vocab"), list):
        return "Unigram"
    return "WordPiece"


def _json_style(data: dict, mtype: str) -> str:
    """How this tokenizer.json spells bytes: byte-level, metaspace (SentencePiece-like) or wordpiece."""
    blob = json.dumps([data.get("pre_tokenizer"), data.get("decoder"), data.get("normalizer")])
    if '"ByteLevel"' in blob:
        return "byte-level"
    if mtype == "WordPiece":
        return "wordpiece"
    return "metaspace"


def _normalise(token: str, style: str, prefix: str = "##") -> bytes:
    if style == "byte-level":
        b = byte_level_to_bytes(token)
        return b if b is not None else token.encode("utf-8")
    if style == "wordpiece":
        return wordpiece_to_bytes(token, prefix)
    return metaspace_to_bytes(token)


def _json_merges(path: Path, merges: list, style: str) -> list[tuple[bytes, bytes]]:
    out = []
    for m in merges:
        if isinstance(m, str):
            a, sep, b = m.partition(" ")
            if not sep:
                raise _fail(path, f"malformed merge rule {quote(m)}")
        else:
            a, b = m
        out.append((_normalise(a, style), _normalise(b, style)))
    return out


def _load_vocab_merges(vocab_path: Path, merges_path: Path) -> Vocabulary:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = read_json(vocab_path, "vocab.json", limit=MAX_JSON_BYTES)
    if not vocab:
        raise _fail(vocab_path, "the vocabulary is empty")
    check_count(vocab_path, len(vocab), "tokens")
    # Checked before the tokenizers library reads the pair: a rule whose merged token is missing makes
    # BPE.from_file panic (pyo3 PanicException, a BaseException) instead of raising an error.
    text = read_text(merges_path, "merges.txt")
    check_count(merges_path, text.count("\n"), "merge rules")
    rules = [ln for ln in text.splitlines() if ln and not ln.startswith("#version")]
    del text
    malformed = next((r for r in rules if r.count(" ") != 1), None)
    if malformed is not None:
        raise _fail(merges_path, f"malformed merge rule {quote(malformed)} (expected 'left right')")
    missing = [r for r in rules[:200000] if any(part not in vocab for part in r.split(" ", 1))
               or "".join(r.split(" ", 1)) not in vocab]
    if missing:
        raise _fail(merges_path, f"{len(missing)} merge rule(s) name tokens missing from {vocab_path.name}, "
                                 f"e.g. {quote(missing[0])}")
    # from what was read above, as BPE.from_file would read the two files (it would open them itself)
    with rust_call(merges_path, f"does not fit {vocab_path.name} (merges need tokens the vocab lacks?)"):
        bpe = models.BPE(vocab, [tuple(r.split(" ", 1)) for r in rules])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    ids, raw, norm = [], [], []
    for token, i in vocab.items():
        b = byte_level_to_bytes(token)
        ids.append(int(i))
        raw.append(token)
        norm.append(b if b is not None else token.encode("utf-8"))
    ids_t, raw_t, norm_t = _checked(vocab_path, ids, raw, norm)

    def encoder(s: str) -> list[bytes]:
        return [_normalise(t, "byte-level") for t in tok.encode(s, add_special_tokens=False).tokens]

    return Vocabulary(path=vocab_path, format="vocab.json+merges.txt", model_type="BPE", ids=ids_t, raw=raw_t,
                      normalised=norm_t, merges_loader=lambda: _json_merges(merges_path, rules, "byte-level"),
                      merges_origin="file", files=(vocab_path, merges_path),
                      notes=("encoding uses GPT-2's byte-level pre-tokenisation",), encoder=encoder)


def _load_wordpiece_txt(path: Path) -> Vocabulary:
    from tokenizers import Tokenizer, models, pre_tokenizers

    text = read_text(path, "vocab.txt")
    check_count(path, text.count("\n"), "tokens")
    tokens = text.splitlines()
    del text
    while tokens and not tokens[-1]:
        tokens.pop()
    if not tokens:
        raise _fail(path, "the vocabulary is empty")
    unk = "[UNK]" if "[UNK]" in tokens else tokens[0]
    # the map WordPiece.from_file would read (line -> index, trailing whitespace trimmed, last wins)
    with rust_call(path, "the tokenizers library cannot read this vocab.txt"):
        wp = models.WordPiece({t.rstrip(): i for i, t in enumerate(tokens)}, unk_token=unk)
    tok = Tokenizer(wp)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = {i for i, t in enumerate(tokens) if t.startswith("[") and t.endswith("]") and len(t) > 2}
    norm = [t.encode("utf-8") if i in special else wordpiece_to_bytes(t) for i, t in enumerate(tokens)]
    ids_t, raw_t, norm_t = _checked(path, list(range(len(tokens))), tokens, norm)
    roles = tuple((r, t) for r, t in (("unk", "[UNK]"), ("pad", "[PAD]"), ("bos", "[CLS]"), ("eos", "[SEP]"))
                  if t in tokens)

    def encoder(s: str) -> list[bytes]:
        return text_pieces(s, tok.encode(s, add_special_tokens=False).offsets)

    return Vocabulary(path=path, format="vocab.txt", model_type="WordPiece", ids=ids_t, raw=raw_t, normalised=norm_t,
                      special_ids=frozenset(special), special_tokens=roles, files=(path,),
                      notes=("encoding uses BERT pre-tokenisation without lower-casing; pieces are the text "
                             "each token covers",), encoder=encoder)


def _load_sentencepiece(path: Path) -> Vocabulary:
    import sentencepiece as spm

    data = read_bytes(path, "SentencePiece model", limit=MAX_SENTENCEPIECE_BYTES)
    if not data:
        raise _fail(path, "empty file (not a SentencePiece model)")
    from sentencepiece import sentencepiece_model_pb2 as pb

    # The protobuf is parsed (C, ~0.1 KiB per piece) and its pieces counted before sentencepiece builds
    # its own tables for them (several KiB per piece).
    proto = pb.ModelProto()
    with guard(path, "not a SentencePiece model"):
        proto.ParseFromString(data)
    check_count(path, len(proto.pieces), "pieces")
    with guard(path, "not a SentencePiece model"):
        sp = spm.SentencePieceProcessor(model_proto=data)
    del data
    n = sp.get_piece_size()
    if n == 0:
        raise _fail(path, "the vocabulary is empty")
    mtype = {1: "Unigram", 2: "BPE", 3: "Word", 4: "Char"}.get(proto.trainer_spec.model_type, "Unigram")
    kinds = pb.ModelProto.SentencePiece
    pieces = [p.piece for p in proto.pieces]
    types = [p.type for p in proto.pieces]
    norm = [p.encode("utf-8") if t in (kinds.CONTROL, kinds.UNKNOWN) else metaspace_to_bytes(p)
            for p, t in zip(pieces, types)]
    ids_t, raw_t, norm_t = _checked(path, list(range(n)), pieces, norm)
    special_ids = frozenset(i for i, t in enumerate(types) if t in (kinds.CONTROL, kinds.UNKNOWN))
    # Added: user-defined pieces and control pieces other than the model's own unk/bos/eos/pad (wherever
    # its trainer put them; -1 = none).
    own = {sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()}
    added = tuple((i, pieces[i], types[i] == kinds.CONTROL) for i, t in enumerate(types)
                  if t == kinds.USER_DEFINED or (t == kinds.CONTROL and i not in own))
    roles = tuple((role, sp.id_to_piece(i) if 0 <= i < n else None)
                  for role, i in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("pad", sp.pad_id()),
                                  ("unk", sp.unk_id())))
    loader, origin = None, "none"
    notes = [f"SentencePiece {mtype}; add_dummy_prefix={proto.normalizer_spec.add_dummy_prefix}"]
    if mtype == "BPE":
        # Merge order is score order (the encoder merges the highest-scoring piece first); merges are
        # character-level, so they are derived on the piece strings and normalised afterwards.
        order = sorted((i for i, t in enumerate(types) if t == kinds.NORMAL), key=lambda i: (-proto.pieces[i].score, i))
        units = [pieces[i] for i in order]
        loader, origin = (lambda: [(metaspace_to_bytes(a), metaspace_to_bytes(b))
                                   for a, b in derive_merges(units)[0]]), "derived from ranks"

    def encoder(s: str) -> list[bytes]:
        return [metaspace_to_bytes(p) for p in sp.encode(s, out_type=str)]

    return Vocabulary(path=path, format="sentencepiece", model_type=mtype, ids=ids_t, raw=raw_t, normalised=norm_t,
                      special_ids=special_ids, special_tokens=roles, added_tokens=added, merges_loader=loader,
                      merges_origin=origin, files=(path,), notes=tuple(notes), encoder=encoder)


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
#: Most metadata entries a GGUF header may declare (real files hold ~30-60).
MAX_GGUF_KEYS = 65_536


def _gguf_metadata(path: Path, prefix: str = "tokenizer.") -> dict[str, object]:
    """The GGUF metadata entries whose key starts with ``prefix`` (scalars, strings and flat arrays).

    Read here, sequentially and bounded, rather than with ``gguf.GGUFReader``: the reader keeps ~1.5 KiB
    and ~23 µs per array element (0.76 GiB and 12 s for a 500,000-token vocabulary, measured), so a
    small file declaring millions of tokens would cost gigabytes. Every declared count is checked
    against :data:`MAX_TOKENIZER_ENTRIES` and the bytes left in the file before anything is read for it.
    """
    import io
    import os
    import struct

    out: dict[str, object] = {}
    with confine.open_file(path) as raw:
        size = os.fstat(raw.fileno()).st_size
        fh = io.BufferedReader(raw, buffer_size=1 << 20)

        def take(n: int) -> bytes:
            data = fh.read(n)
            if len(data) != n:
                raise _fail(path, "GGUF metadata runs past the end of the file")
            return data

        def unpack(fmt: str):
            return struct.unpack(fmt, take(struct.calcsize(fmt)))[0]

        def string() -> str:
            n = unpack("<Q")
            if n > size:
                raise _fail(path, f"a GGUF string declares {n:,} bytes, more than the file holds")
            return take(n).decode("utf-8", "surrogateescape")

        def value(kind: int):
            if kind == _GGUF_STRING:
                return string()
            if kind in _GGUF_SCALARS:
                return unpack(_GGUF_SCALARS[kind])
            raise _fail(path, f"unknown GGUF value type {kind}")

        if take(4) != b"GGUF":
            raise _fail(path, "not a GGUF file (no GGUF magic)")
        version = unpack("<I")
        if version not in (2, 3):
            raise UnsupportedFormat(f"{path}: GGUF version {version} is not read (versions 2 and 3 are)")
        unpack("<Q")  # tensor count: the tensors are not read
        n_keys = unpack("<Q")
        if n_keys > MAX_GGUF_KEYS:
            raise _fail(path, f"the GGUF header declares {n_keys:,} metadata entries, above {MAX_GGUF_KEYS:,}")
        for _ in range(n_keys):
            key = string()
            kind = unpack("<I")
            wanted = key.startswith(prefix)
            if kind != _GGUF_ARRAY:
                item = value(kind)
                if wanted:
                    out[key] = item
                continue
            inner, count = unpack("<I"), unpack("<Q")
            check_count(path, count, f"entries in GGUF array {quote(key)}")
            width = 8 if inner == _GGUF_STRING else struct.calcsize(_GGUF_SCALARS.get(inner, "<B"))
            if inner != _GGUF_STRING and inner not in _GGUF_SCALARS:
                raise _fail(path, f"GGUF array {quote(key)} holds values of type {inner} (nested arrays are not read)")
            if count * width > size:
                raise _fail(path, f"GGUF array {quote(key)} declares {count:,} entries, more than the file holds")
            if inner != _GGUF_STRING:
                data = take(count * width)
                if wanted:
                    out[key] = list(struct.unpack(f"<{count}{_GGUF_SCALARS[inner][1:]}", data))
            elif wanted:
                out[key] = [string() for _ in range(count)]
            else:
                for _ in range(count):
                    fh.seek(unpack("<Q"), io.SEEK_CUR)
    return out


def _load_gguf(path: Path) -> Vocabulary:
    with guard(path, "not a readable GGUF file"):
        fields = _gguf_metadata(path)

    def field(key: str):
        return fields.get(key)

    tokens = field("tokenizer.ggml.tokens")
    if not tokens:
        raise UnsupportedFormat(f"{path}: the GGUF file carries no tokenizer.ggml.tokens vocabulary")
    model = field("tokenizer.ggml.model") or "llama"
    types = field("tokenizer.ggml.token_type") or [1] * len(tokens)
    scores = field("tokenizer.ggml.scores")
    style = {"gpt2": "byte-level", "llama": "metaspace", "bert": "metaspace", "t5": "metaspace"}.get(model, "metaspace")
    special = {i for i, t in enumerate(types) if t in (2, 3)}
    norm = [tok.encode("utf-8") if i in special or t == 4 and style == "byte-level" else _normalise(tok, style)
            for i, (tok, t) in enumerate(zip(tokens, types))]
    ids_t, raw_t, norm_t = _checked(path, list(range(len(tokens))), list(tokens), norm)
    roles = []
    for role in SPECIAL_ROLES:
        i = field(f"tokenizer.ggml.{role}_token_id")
        roles.append((role, tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None))
    loader, origin = None, "none"
    mtype = {"gpt2": "BPE", "llama": "SentencePiece", "bert": "WordPiece", "t5": "Unigram"}.get(model, model)
    raw_merges = field("tokenizer.ggml.merges")
    if raw_merges:
        rules = list(raw_merges)
        loader, origin = (lambda: _json_merges(path, rules, style)), "file"
        mtype = "BPE"
    elif model == "llama" and scores is not None:
        units = [tokens[i] for i in sorted((i for i, t in enumerate(types) if t == 1), key=lambda i: (-scores[i], i))]
        loader, origin = (lambda: [(metaspace_to_bytes(a), metaspace_to_bytes(b))
                                   for a, b in derive_merges(units)[0]]), "derived from ranks"
    return Vocabulary(path=path, format="gguf", model_type=mtype, ids=ids_t, raw=raw_t, normalised=norm_t,
                      special_ids=frozenset(special), special_tokens=tuple(roles), merges_loader=loader,
                      merges_origin=origin,
                      files=(path,), notes=(f"tokenizer.ggml.model = {model}; GGUF carries no encoder here",))


def _with_side_files(vocab: Vocabulary, side: dict[str, Path], implied: dict[str, str] | None = None) -> Vocabulary:
    """Fill special tokens and added tokens from the Hugging Face side files beside the main file.

    Roles (bos/eos/pad/unk), first found wins: what the main file states itself (SentencePiece/GGUF ids, a
    tokenizer.json's unk and padding, tekken's control names), then special_tokens_map.json, then
    tokenizer_config.json, then what a tokenizer.json's post-processor implies (``implied``); None when
    none of them says. Added tokens: tokenizer_config.json ``added_tokens_decoder`` and added_tokens.json
    entries at ids the main file lacks join the vocabulary (literal UTF-8, special when the file says so
    or the token is named a special token); an entry at an id the main file holds with the same text can
    only mark it special; one at an id holding another token is noted and ignored.
    """
    from dataclasses import replace

    found = {role: raw for role, raw in vocab.special_tokens if raw is not None}
    origin = {role: vocab.path.name for role in found}
    read = list(vocab.files)
    config: dict[str, dict] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json", "added_tokens.json"):
        p = side.get(name)
        if p is None:
            continue
        data = read_json(p, name)
        read.append(p)
        config[name] = data
    named: set[str] = set()  # every string a config file calls a special token
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        data = config.get(name, {})
        for role in SPECIAL_ROLES:
            value = _token_text(data.get(f"{role}_token"))
            if value is not None:
                named.add(value)
                if role not in found:
                    found[role], origin[role] = value, name
        extra = data.get("additional_special_tokens")
        named.update(t for t in map(_token_text, extra if isinstance(extra, list) else []) if t is not None)
    for role, value in (implied or {}).items():
        if role not in found:
            found[role], origin[role] = value, f"{vocab.path.name} post-processor"
    notes = list(vocab.notes)
    if origin:
        notes.append("special tokens from " + "; ".join(f"{r}: {origin[r]}" for r in SPECIAL_ROLES if r in origin))
    roles = tuple((r, found.get(r)) for r in SPECIAL_ROLES)
    entries = _side_added_tokens(config, side)
    if not entries:
        return replace(vocab, special_tokens=roles, files=tuple(dict.fromkeys(read)), notes=tuple(notes))
    raw_of = dict(zip(vocab.ids, vocab.raw))
    ids, raw, norm = list(vocab.ids), list(vocab.raw), list(vocab.normalised)
    special_ids, added, clashes, marked, adders = set(vocab.special_ids), list(vocab.added_tokens), [], 0, set()
    for i, (text, special, where) in sorted(entries.items()):
        special = special if special is not None else text in named
        if i in raw_of:
            if raw_of[i] != text:
                clashes.append(f"{where} puts {quote(text)} at id {i}, which {vocab.path.name} holds as "
                               f"{quote(raw_of[i])}")
            elif special and i not in special_ids:
                special_ids.add(i)
                marked += 1
            continue
        ids.append(i)
        raw.append(text)
        norm.append(text.encode("utf-8"))
        added.append((i, text, special))
        adders.add(where)
        if special:
            special_ids.add(i)
    new = len(ids) - len(vocab.ids)
    if new:
        notes.append(f"{new} added token(s) from {', '.join(sorted(adders))} beyond {vocab.path.name}'s vocabulary")
    if marked:
        notes.append(f"{marked} token(s) marked special by the side files")
    notes.extend(clashes[:3])
    if len(clashes) > 3:
        notes.append(f"... and {len(clashes) - 3} more such clashes (ignored)")
    ids_t, raw_t, norm_t = _checked(vocab.path, ids, raw, norm)
    return replace(vocab, ids=ids_t, raw=raw_t, normalised=norm_t, special_ids=frozenset(special_ids),
                   added_tokens=tuple(sorted(added)), special_tokens=roles, files=tuple(dict.fromkeys(read)),
                   notes=tuple(notes), _cache={})


def _token_text(value) -> str | None:
    """A special-token entry of a config file: a string, or an AddedToken dict with 'content'."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _side_added_tokens(config: dict[str, dict], side: dict[str, Path]) -> dict[int, tuple[str, bool | None, str]]:
    """id -> (text, special or None when the file does not say, file name) from the side files."""
    out: dict[int, tuple[str, bool | None, str]] = {}
    decoder = config.get("tokenizer_config.json", {}).get("added_tokens_decoder")
    if decoder is not None:
        if not isinstance(decoder, dict):
            raise _fail(side["tokenizer_config.json"], "added_tokens_decoder is not an object")
        check_count(side["tokenizer_config.json"], len(decoder), "added tokens")
        for key, entry in decoder.items():
            text = _token_text(entry)
            i = int(key) if key.isascii() and key.isdigit() and len(key) <= 10 else None
            if i is None or text is None:
                raise _fail(side["tokenizer_config.json"], f"added_tokens_decoder entry {quote(key)} is not id -> token")
            out[i] = (text, bool(entry.get("special")) if isinstance(entry, dict) else None, "tokenizer_config.json")
    if "added_tokens.json" in config:
        check_count(side["added_tokens.json"], len(config["added_tokens.json"]), "added tokens")
    for text, i in config.get("added_tokens.json", {}).items():
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i <= MAX_TOKEN_ID:
            raise _fail(side["added_tokens.json"], f"token {quote(text)} has no valid id ({quote(i)})")
        out.setdefault(i, (text, None, "added_tokens.json"))
    return out


__all__ = ["Vocabulary", "load_vocabulary", "load_from_files", "derive_merges", "first_ids", "text_pieces",
           "byte_level_to_bytes", "bytes_to_byte_level", "metaspace_to_bytes", "wordpiece_to_bytes"]
