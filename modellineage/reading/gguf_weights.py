"""Read the weights of a GGUF file (llama.cpp's format) as if they were a Hugging Face checkpoint.

A GGUF file is a header (magic, version, metadata key/values, one record per tensor: name, axes,
GGML type, offset) followed by an aligned data section. This module parses that header itself,
bounded like every other parser of the reading layer (every declared count and size is checked
against the bytes the file holds before anything is read for it; tensors must lie inside the file,
be aligned and not overlap), and presents the tensors through :class:`GGUFStore`, a
:class:`modellineage.reading.tensors.TensorStore` whose names, shapes and row order are those of the
Hugging Face checkpoint llama.cpp's converter started from:

* names: ``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight`` and so on
  (:data:`_BLOCK_NAMES`); stacked experts ``blk.N.ffn_up_exps.weight`` ``(E, I, H)`` become one tensor
  per expert (``model.layers.N.mlp.experts.E.up_proj.weight``), each a contiguous byte range of the
  stacked tensor. The canonical scheme (:mod:`modellineage.reading.naming`) then maps them as it maps
  any Hugging Face checkpoint; names not in the table are kept verbatim (and listed as unknown there).
* shapes: GGUF lists axes innermost first (``ne[0]`` = columns); they are reversed.
* rows: for the architectures whose converter permutes the rows of q and k (llama.cpp's
  ``LlamaModel.permute``: per head, rows ``(2, D/2)`` are stored as ``(D/2, 2)`` so that llama.cpp's
  rotary embedding pairs adjacent rows), row ``head*D + half*D/2 + i`` of the Hugging Face tensor is
  read from stored row ``head*D + 2*i + half`` (:func:`unpermute_rows`). The permutation is undone
  on the row indices, never by moving data.

Values: F32/F16/BF16/F64 decode exactly (and feed the streaming fast path); quantised types
(Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, the K-quants, the IQ types, ... whatever ``gguf.quants`` dequantises,
found by asking it) are read one whole stored row at a time (GGML blocks never cross a row) and
dequantised through the ``gguf`` package. A tensor of any other type is listed but not decoded, so
the audits skip it naming its type. Reads are ``pread`` s into bounded buffers, counted like the
safetensors store's, so memory stays flat in the model's size.

:func:`config_from_gguf` turns the metadata into the config facts ``config.json`` would state, and
:func:`scan_gguf` hashes the file and each (per-expert) tensor's byte range in one sequential pass.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import math
import os
import re
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modellineage.errors import CorruptCheckpoint, SourceNotFound, UnsupportedFormat
from modellineage.reading import confine
from modellineage.reading.boundary import quote
from modellineage.reading.tensors import MAX_TENSORS, TensorInfo, TensorStore, decode_exact, row_runs

__all__ = [
    "GGUFHeader",
    "GGUFTensor",
    "GGUFTensorInfo",
    "GGUFStore",
    "read_gguf_header",
    "config_from_gguf",
    "scan_gguf",
    "unpermute_rows",
    "dequantisable_types",
    "check_split",
    "PERMUTED_ARCHITECTURES",
]

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
#: Most metadata entries a header may declare (real files hold ~30-60).
MAX_KEYS = 65_536
#: Arrays up to this many entries are kept in :attr:`GGUFHeader.metadata`; longer ones (the tokenizer's
#: vocabulary and merges) are skipped here, only their length is kept (the tokenizer reader reads them).
_KEEP_ARRAY = 4096
_MAX_DIMS = 4  # GGML_MAX_DIMS

#: ``general.architecture`` values whose llama.cpp converter permutes the rows of q and k
#: (``undo_permute = True`` on ``LlamaModel`` and the classes built on it, convert_hf_to_gguf.py).
#: Every other architecture stores q and k in the Hugging Face row order.
PERMUTED_ARCHITECTURES = frozenset({"llama", "granite", "granitemoe", "granitehybrid", "llada"})

_EXACT = {"F32": "F32", "F16": "F16", "BF16": "BF16", "F64": "F64"}


@functools.cache
def dequantisable_types() -> frozenset[str]:
    """GGML type names ``gguf.quants.dequantize`` decodes in this installation (asked, not assumed)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    found = set()
    for qtype, (_block, type_size) in GGML_QUANT_SIZES.items():
        if qtype.name.startswith("I") and qtype.name[1:].isdigit():
            continue  # integer tensors are not weights to compare
        try:
            dequantize(np.zeros((1, type_size), dtype=np.uint8), GGMLQuantizationType(qtype))
        except Exception:  # NotImplementedError and friends: not decodable here
            continue
        found.add(qtype.name)
    return frozenset(found)


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor record of a GGUF header: GGUF axes (innermost first) and the absolute byte range."""

    name: str
    ggml_type: int
    type_name: str
    ne: tuple[int, ...]
    begin: int
    end: int
    block_size: int
    type_size: int

    @property
    def shape(self) -> tuple[int, ...]:
        """Axes outermost first, as numpy and safetensors list them."""
        return tuple(reversed(self.ne))

    @property
    def row_bytes(self) -> int:
        return self.ne[0] // self.block_size * self.type_size if self.ne else self.type_size


@dataclass(frozen=True)
class GGUFHeader:
    """A parsed GGUF header. ``metadata`` holds scalars, strings and short arrays; ``array_lengths`` the
    length of every array (long ones included)."""

    path: Path
    size: int
    version: int
    alignment: int
    data_start: int
    metadata: dict[str, object] = field(repr=False)
    array_lengths: dict[str, int] = field(repr=False)
    tensors: dict[str, GGUFTensor] = field(repr=False)

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None


def _fail(path: Path, why: str) -> CorruptCheckpoint:
    return CorruptCheckpoint(f"{path}: {why}")


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Read and validate a GGUF header without touching tensor data.

    Raises:
        SourceNotFound: no such file.
        CorruptCheckpoint: bad magic, truncated header, counts or sizes beyond what the file holds,
            tensors out of range, misaligned or overlapping, a tensor whose row does not tile into its
            type's blocks.
        UnsupportedFormat: a GGUF version other than 2 and 3, or an unknown tensor type.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    if not path.is_file():
        raise SourceNotFound(f"{path}: no such file")
    with confine.open_file(path) as raw:
        size = os.fstat(raw.fileno()).st_size
        fh = io.BufferedReader(raw, buffer_size=1 << 20)
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if n > size - pos:
                raise _fail(path, f"GGUF header runs past the end of the file (wanted {n} bytes at {pos})")
            data = fh.read(n)
            if len(data) != n:
                raise _fail(path, "GGUF header runs past the end of the file")
            pos += n
            return data

        def skip(n: int) -> None:
            nonlocal pos
            if n > size - pos:
                raise _fail(path, f"GGUF header runs past the end of the file (skipping {n} bytes at {pos})")
            fh.seek(n, io.SEEK_CUR)
            pos += n

        def unpack(fmt: str):
            return struct.unpack(fmt, take(struct.calcsize(fmt)))[0]

        def string() -> str:
            n = unpack("<Q")
            if n > size - pos:
                raise _fail(path, f"a GGUF string declares {n:,} bytes, more than the file holds")
            return take(n).decode("utf-8", "surrogateescape")

        if take(4) != b"GGUF":
            raise _fail(path, "not a GGUF file (no GGUF magic)")
        version = unpack("<I")
        if version not in (2, 3):
            raise UnsupportedFormat(f"{path}: GGUF version {version} is not read (versions 2 and 3 are)")
        n_tensors, n_keys = unpack("<Q"), unpack("<Q")
        if n_keys > MAX_KEYS:
            raise _fail(path, f"the GGUF header declares {n_keys:,} metadata entries, above {MAX_KEYS:,}")
        if n_tensors > MAX_TENSORS or n_tensors * 24 > size:
            raise _fail(path, f"the GGUF header declares {n_tensors:,} tensors, more than the file can hold "
                              f"or the safety limit of {MAX_TENSORS:,}")
        metadata: dict[str, object] = {}
        lengths: dict[str, int] = {}
        for _ in range(n_keys):
            key = string()
            kind = unpack("<I")
            if kind == _STRING:
                metadata[key] = string()
            elif kind in _SCALARS:
                metadata[key] = unpack(_SCALARS[kind])
            elif kind == _ARRAY:
                inner, count = unpack("<I"), unpack("<Q")
                if inner != _STRING and inner not in _SCALARS:
                    raise _fail(path, f"GGUF array {quote(key)} holds values of type {inner} (not read)")
                width = 8 if inner == _STRING else struct.calcsize(_SCALARS[inner])
                if count * width > size - pos:
                    raise _fail(path, f"GGUF array {quote(key)} declares {count:,} entries, more than the file holds")
                lengths[key] = count
                keep = count <= _KEEP_ARRAY
                if inner == _STRING:
                    items = [string() for _ in range(count)] if keep else None
                    if not keep:
                        for _ in range(count):
                            skip(unpack("<Q"))
                else:
                    data = take(count * width) if keep else skip(count * width)
                    items = list(struct.unpack(f"<{count}{_SCALARS[inner][1:]}", data)) if keep else None
                if keep:
                    metadata[key] = items
            else:
                raise _fail(path, f"unknown GGUF value type {kind} for key {quote(key)}")
        records = []
        for _ in range(n_tensors):
            name = string()
            n_dims = unpack("<I")
            if not 0 < n_dims <= _MAX_DIMS:
                raise _fail(path, f"tensor {quote(name)} declares {n_dims} axes (1-{_MAX_DIMS} allowed)")
            ne = tuple(unpack("<Q") for _ in range(n_dims))
            ggml_type, offset = unpack("<I"), unpack("<Q")
            records.append((name, ne, ggml_type, offset))
        header_end = pos
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _fail(path, f"general.alignment {quote(alignment)} is not a positive power of two")
    data_start = -(-header_end // alignment) * alignment
    tensors: dict[str, GGUFTensor] = {}
    for name, ne, ggml_type, offset in records:
        try:
            qtype = GGMLQuantizationType(ggml_type)
        except ValueError:
            raise UnsupportedFormat(f"{path}: tensor {quote(name)} has unknown GGML type {ggml_type}") from None
        block, type_size = GGML_QUANT_SIZES[qtype]
        if ne[0] % block:
            raise _fail(path, f"tensor {quote(name)} ({qtype.name}) has {ne[0]} columns, not a multiple of its "
                              f"block of {block}")
        if math.prod(ne[1:]) > size or ne[0] > size * block:
            raise _fail(path, f"tensor {quote(name)} declares axes {quote(ne)}, more elements than the file has bytes")
        nbytes = math.prod(ne[1:]) * (ne[0] // block) * type_size
        if offset % alignment:
            raise _fail(path, f"tensor {quote(name)} starts at offset {offset}, not aligned to {alignment}")
        begin = data_start + offset
        if begin + nbytes > size:
            raise _fail(path, f"tensor {quote(name)} ({qtype.name} {quote(tuple(reversed(ne)))}) needs bytes "
                              f"{begin}-{begin + nbytes}, past the end of the file ({size} bytes)")
        if name in tensors:
            raise _fail(path, f"the header names tensor {quote(name)} twice")
        tensors[name] = GGUFTensor(name, ggml_type, qtype.name, ne, begin, begin + nbytes, block, type_size)
    ranges = sorted((t for t in tensors.values() if t.end > t.begin), key=lambda t: t.begin)
    for prev, cur in zip(ranges, ranges[1:]):
        if cur.begin < prev.end:
            raise _fail(path, f"tensors {quote(prev.name)} and {quote(cur.name)} overlap")
    return GGUFHeader(path, size, version, alignment, data_start, metadata, lengths,
                      dict(sorted(tensors.items())))


def declares_tensors(path: str | os.PathLike[str]) -> bool:
    """Whether a GGUF file declares any tensor (its 24-byte preamble; True when it cannot be read, so the
    weight audits that open it fail naming the file rather than skipping)."""
    try:
        with confine.open_file(Path(path)) as fh:
            head = fh.read(24)
    except Exception:
        return True
    if len(head) < 24 or head[:4] != b"GGUF":
        return True
    return int.from_bytes(head[8:16], "little") > 0


# ----------------------------------------------------------------------------------------- naming
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output_norm.bias": "model.norm.bias",
    "output.weight": "lm_head.weight",
}
#: llama.cpp block tensor -> Hugging Face module under ``model.layers.N.`` (gguf-py's tensor_mapping, read
#: the other way round, for the llama-like families: llama, mistral, mixtral, qwen2/3 (MoE), granite).
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
}
_EXPERT_NAMES = {"ffn_gate_exps": "gate_proj", "ffn_up_exps": "up_proj", "ffn_down_exps": "down_proj"}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def unpermute_rows(rows: int, heads: int) -> np.ndarray:
    """Stored row of each Hugging Face row of a q or k projection permuted by llama.cpp's converter.

    The converter views the ``rows = heads * D`` rows as ``(heads, 2, D/2)`` and stores them as
    ``(heads, D/2, 2)``; so Hugging Face row ``h*D + j*D/2 + i`` is stored row ``h*D + 2*i + j``.
    """
    if heads <= 0 or rows % (2 * heads):
        raise CorruptCheckpoint(f"cannot undo llama.cpp's q/k permutation: {rows} rows do not split into "
                                f"{heads} heads of an even size")
    d = rows // heads
    h, j, i = np.meshgrid(np.arange(heads), np.arange(2), np.arange(d // 2), indexing="ij")
    return (h * d + 2 * i + j).reshape(-1).astype(np.int64)


# ----------------------------------------------------------------------------------------- store
@dataclass(frozen=True)
class GGUFTensorInfo(TensorInfo):
    """A tensor as the audits see it (Hugging Face name, shape and row order), with where its rows lie.

    ``dtype`` is the GGML type name (``Q8_0``, ``F16``, ...). ``begin``/``end`` is the contiguous byte
    range holding the tensor (a slice of a stacked expert tensor, or a permuted q/k's whole range);
    ``row_map[r]`` is the stored row (counted from ``begin``) of row ``r``, ``None`` when they agree.
    """

    ggml_type: int = 0
    row_bytes: int = 0
    row_map: np.ndarray | None = field(default=None, compare=False, repr=False)
    stored_name: str = ""

    @property
    def itemsize(self) -> float:  # type: ignore[override]
        """Bytes per element: an int for plain floats, the mean share of a block for quantised types."""
        if not self.cols:
            return 0
        whole, rest = divmod(self.row_bytes, self.cols)
        return whole if not rest else self.row_bytes / self.cols

    @property
    def is_float(self) -> bool:
        return self.dtype in dequantisable_types()

    @property
    def exact(self) -> bool:
        """Stored as plain floats (F32/F16/BF16/F64): decoded exactly, no dequantisation."""
        return self.dtype in _EXACT

    def feeder(self) -> GGUFFeeder:
        """The running digest of this tensor's bytes (modellineage.reading.hashing.feeder_for)."""
        return GGUFFeeder(self)


def _virtual_tensors(header: GGUFHeader, notes: list[str]) -> dict[str, GGUFTensorInfo]:
    arch = header.architecture or ""
    meta = header.metadata
    n_head = meta.get(f"{arch}.attention.head_count")
    n_kv = meta.get(f"{arch}.attention.head_count_kv", n_head)
    permuted = arch in PERMUTED_ARCHITECTURES
    if not permuted:
        notes.append(f"general.architecture = {quote(arch)}: q/k rows read as stored (llama.cpp permutes them "
                     f"only for {', '.join(sorted(PERMUTED_ARCHITECTURES))})")
    out: dict[str, GGUFTensorInfo] = {}
    unknown = []
    split = sum(t.ne[2] for t in header.tensors.values()
                if len(t.ne) == 3 and (m := _BLOCK_RE.match(t.name)) and m.group(2) in _EXPERT_NAMES)
    if split + len(header.tensors) > MAX_TENSORS:
        raise _fail(header.path, f"its stacked expert tensors split into {split:,} tensors, above the safety limit "
                                 f"of {MAX_TENSORS:,} (MAX_TENSORS, modellineage.reading.tensors)")

    def add(name: str, t: GGUFTensor, shape: tuple[int, ...], begin: int, end: int, row_map=None) -> None:
        if name in out:
            raise _fail(header.path, f"tensors {quote(out[name].stored_name)} and {quote(t.name)} both map to "
                                     f"{quote(name)}")
        out[name] = GGUFTensorInfo(name, t.type_name, shape, header.path, begin, end, ggml_type=t.ggml_type,
                                   row_bytes=t.row_bytes, row_map=row_map, stored_name=t.name)

    for t in header.tensors.values():
        if t.name in _TOP_NAMES:
            add(_TOP_NAMES[t.name], t, t.shape, t.begin, t.end)
            continue
        m = _BLOCK_RE.match(t.name)
        if m and m.group(2) in _EXPERT_NAMES and len(t.ne) == 3:
            layer, kind = m.group(1), m.group(3)
            experts = t.ne[2]
            per = (t.end - t.begin) // experts if experts else 0
            for e in range(experts):
                add(f"model.layers.{layer}.mlp.experts.{e}.{_EXPERT_NAMES[m.group(2)]}.{kind}", t, t.shape[1:],
                    t.begin + e * per, t.begin + (e + 1) * per)
            continue
        if m and m.group(2) in _BLOCK_NAMES:
            layer, role, kind = m.groups()
            row_map = None
            if permuted and role in ("attn_q", "attn_k"):
                heads = n_head if role == "attn_q" else n_kv
                if not isinstance(heads, int) or heads <= 0:
                    raise _fail(header.path, f"tensor {quote(t.name)} is stored permuted but the metadata gives "
                                             f"no usable {arch}.attention.head_count{'' if role == 'attn_q' else '_kv'}")
                rows = t.shape[0]
                row_map = unpermute_rows(rows, heads)
            add(f"model.layers.{layer}.{_BLOCK_NAMES[role]}.{kind}", t, t.shape, t.begin, t.end, row_map)
            continue
        unknown.append(t.name)
        add(t.name, t, t.shape, t.begin, t.end)
    if unknown:
        notes.append(f"{len(unknown)} GGUF tensor name(s) not mapped to Hugging Face names, kept verbatim: "
                     + ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else ""))
    return dict(sorted(out.items()))


_SPLIT_NAME = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
_SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


def check_split(headers: Sequence[GGUFHeader]) -> None:
    """Check that ``headers`` (in shard order) are the whole of one split GGUF (llama.cpp's gguf-split), or
    one unsplit file: every shard states ``split.no`` (its index from 0), ``split.count`` (the number of
    shards) and ``split.tensors.count`` (the tensors of all shards), and they agree with the shard's name
    (``-0000k-of-0000n.gguf``), the files given and the tensors found.

    Raises:
        CorruptCheckpoint: naming the first file that disagrees, and how.
    """
    n = len(headers)
    total = sum(len(h.tensors) for h in headers)
    values = [[h.metadata.get(k) for k in _SPLIT_KEYS] for h in headers]
    if n == 1 and all(v is None for v in values[0]):
        return  # an ordinary single GGUF file
    for i, (h, (no, count, _)) in enumerate(zip(headers, values)):  # each shard is the one its place says
        bad = [k for k, v in zip(_SPLIT_KEYS, values[i]) if not isinstance(v, int) or isinstance(v, bool)]
        if bad:
            raise _fail(h.path, f"shard {i + 1} of {n} of a split GGUF without a usable {', '.join(bad)}")
        if count != n:
            raise _fail(h.path, f"split.count = {count}, but the split GGUF was given as {n} shard file(s)"
                                + ("; name its first shard (…-00001-of-…gguf) as the source" if n == 1 else ""))
        if no != i:
            raise _fail(h.path, f"split.no = {no}, but it is shard {i + 1} of {n} (split.no counts from 0)")
        m = _SPLIT_NAME.search(h.path.name)
        if m is None or (int(m.group(1)), int(m.group(2))) != (i + 1, n):
            raise _fail(h.path, f"shard {i + 1} of {n} of a split GGUF must be named …-{i + 1:05d}-of-{n:05d}.gguf")
    for h, (_, _, tensors) in zip(headers, values):  # and together they hold what each says they hold
        if tensors != total:
            raise _fail(h.path, f"split.tensors.count = {tensors}, but the {n} shard(s) hold {total} tensors")


class GGUFStore(TensorStore):
    """A GGUF model's tensors behind the :class:`TensorStore` interface (Hugging Face names, shapes and
    row order; values dequantised to float64, or exact float32 on the streaming fast path).

    Args:
        files: one ``.gguf`` file, or every shard of a split GGUF in order (``-00001-of-0000n`` first; each
            header validated, and their ``split.*`` metadata checked by :func:`check_split`). The first
            shard's metadata (architecture, head counts) applies to the tensors of every shard.
    """

    def __init__(self, files: Sequence[str | os.PathLike[str]], *, scale_block=None) -> None:  # noqa: ARG002
        paths = tuple(Path(f) for f in files)
        if not paths:
            raise UnsupportedFormat("no GGUF file given")
        headers = tuple(read_gguf_header(p) for p in paths)
        check_split(headers)
        notes: list[str] = []
        first = headers[0]
        index: dict[str, GGUFTensorInfo] = {}
        for h in headers:
            shard = h if h is first else dataclasses.replace(h, metadata={**first.metadata, **h.metadata})
            for name, info in _virtual_tensors(shard, notes if h is first else []).items():
                if name in index:
                    raise _fail(h.path, f"tensor {quote(info.stored_name)} ({quote(name)}) is also in "
                                        f"{index[name].file.name}")
                index[name] = info
            if len(index) > MAX_TENSORS:
                raise _fail(h.path, f"the shards up to this one hold {len(index):,} tensors, above the safety "
                                    f"limit of {MAX_TENSORS:,} (MAX_TENSORS, modellineage.reading.tensors)")
        self._scale_block = None
        self._files = paths
        self._headers = headers
        self._index = dict(sorted(index.items()))
        self.notes = tuple(notes)
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self.bytes_read = 0

    @functools.cached_property
    def header(self) -> GGUFHeader:
        """The model's header: the first shard's, with the tensors of every shard (for config facts)."""
        first = self._headers[0]
        if len(self._headers) == 1:
            return first
        tensors = {}
        for h in self._headers:
            tensors.update(h.tensors)
        return dataclasses.replace(first, size=sum(h.size for h in self._headers), tensors=dict(sorted(tensors.items())))

    # -- stored rows -------------------------------------------------------------------------
    def _stored(self, info: GGUFTensorInfo, rows: np.ndarray) -> np.ndarray:
        """Stored rows (indices from ``info.begin``) for tensor rows ``rows``."""
        return rows if info.row_map is None else info.row_map[rows]

    def _raw_rows(self, info: GGUFTensorInfo, stored: np.ndarray, into=None) -> np.ndarray:
        """The bytes of stored rows ``stored`` (in that order), ``(len, row_bytes)`` uint8."""
        rb = info.row_bytes
        n = stored.size
        length = n * rb
        buf = np.empty(length, dtype=np.uint8) if into is None else np.frombuffer(into, dtype=np.uint8,
                                                                                  count=length)
        if not n:
            return buf.reshape(0, rb)
        lo, hi = int(stored.min()), int(stored.max()) + 1
        if hi - lo == n and (n == 1 or np.all(np.diff(stored) == 1)):  # one run, in order
            self._pread(info, info.begin + lo * rb, length, buf)
        elif hi - lo <= 2 * n:  # a permuted block: read the span once, reorder in memory
            span = np.empty((hi - lo) * rb, dtype=np.uint8)
            self._pread(info, info.begin + lo * rb, span.size, span)
            buf.reshape(n, rb)[:] = span.reshape(hi - lo, rb)[stored - lo]
        else:
            order = np.argsort(stored, kind="stable")
            uniq = stored[order]
            tmp = np.empty(length, dtype=np.uint8)
            starts, runs = row_runs(uniq)
            self._pread_runs(info, (info.begin + uniq[starts] * rb).tolist(), (starts * rb).tolist(),
                             (runs * rb).tolist(), tmp)
            buf.reshape(n, rb)[order] = tmp.reshape(n, rb)
        return buf.reshape(n, rb)

    def _values(self, info: GGUFTensorInfo, raw: np.ndarray) -> np.ndarray:
        """float64 values of stored rows ``raw`` ``(n, row_bytes)``."""
        n = raw.shape[0]
        if info.exact:
            return decode_exact(info.dtype, raw.reshape(-1), (n, info.cols)).astype(np.float64)
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        with np.errstate(invalid="ignore", over="ignore"):
            return dequantize(raw, GGMLQuantizationType(info.ggml_type)).reshape(n, info.cols).astype(np.float64)

    # -- the TensorStore reading interface ---------------------------------------------------
    def _rows_raw(self, info, start: int, stop: int) -> np.ndarray:
        return self._values(info, self._raw_rows(info, self._stored(info, np.arange(start, stop))))

    def read_rows(self, name, rows, *, dequantize: bool = True, check_finite: bool = False) -> np.ndarray:
        info = self.info(name)
        self._check_float(info)
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= info.rows):
            raise IndexError(f"{info.file}: row indices out of range for tensor {name!r} with {info.rows} rows")
        values = self._values(info, self._raw_rows(info, self._stored(info, idx)))
        return self._finish(info, values, idx if idx.size else np.zeros(1, np.int64), False, check_finite)

    def read_raw_row_range(self, name, start, stop, *, into=None) -> memoryview:
        """The stored bytes of rows ``start:stop`` in the tensor's (Hugging Face) row order."""
        info = self.info(name)
        if not (0 <= start <= stop <= info.rows):
            raise IndexError(f"{info.file}: rows {start}:{stop} out of range for tensor {name!r} with {info.rows} rows")
        length = (stop - start) * info.row_bytes
        if into is None or memoryview(into).nbytes < length:
            into = bytearray(length)
        self._raw_rows(info, self._stored(info, np.arange(start, stop)), into)
        return memoryview(into).cast("B")[:length]

    def prefetch_rows(self, name, rows) -> None:
        info = self.info(name)
        idx = np.unique(self._stored(info, np.asarray(rows, dtype=np.int64).reshape(-1)))
        if not idx.size or idx[0] < 0 or idx[-1] >= info.rows:
            return
        rb = info.row_bytes
        starts, counts = row_runs(idx)
        self._advise(info, (info.begin + idx[starts] * rb).tolist(), (counts * rb).tolist())

    def scale_for(self, name: str) -> str | None:
        self.info(name)
        return None


# ----------------------------------------------------------------------------------------- config
#: ``general.architecture`` -> (``model_type``, class name) of the Hugging Face config it came from.
_ARCH = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen2moe": ("qwen2_moe", "Qwen2MoeForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "qwen3moe": ("qwen3_moe", "Qwen3MoeForCausalLM"),
    "granite": ("granite", "GraniteForCausalLM"),
}


def config_from_gguf(header: GGUFHeader) -> dict:
    """The config facts a ``config.json`` would state, from GGUF metadata (and the tensor list for
    ``tie_word_embeddings``). Keys the metadata does not give are left out, never guessed."""
    arch = header.architecture or "unknown"
    meta = header.metadata

    def get(key: str):
        return meta.get(f"{arch}.{key}")

    n_experts = get("expert_count")
    model_type, cls = _ARCH.get(arch, (arch, None))
    if arch == "llama" and n_experts:
        model_type, cls = "mixtral", "MixtralForCausalLM"
    out: dict[str, object] = {"model_type": model_type}
    if cls:
        out["architectures"] = [cls]
    pairs = {
        "hidden_size": get("embedding_length"),
        "num_hidden_layers": get("block_count"),
        "intermediate_size": get("feed_forward_length"),
        "num_attention_heads": get("attention.head_count"),
        "num_key_value_heads": get("attention.head_count_kv"),
        "max_position_embeddings": get("context_length"),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "rope_theta": get("rope.freq_base"),
        "head_dim": get("attention.key_length"),
        "num_local_experts" if model_type == "mixtral" else "num_experts": n_experts,
        "num_experts_per_tok": get("expert_used_count"),
        "moe_intermediate_size": get("expert_feed_forward_length"),
        "shared_expert_intermediate_size": get("expert_shared_feed_forward_length"),
    }
    for key, value in pairs.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    vocab = get("vocab_size") or header.array_lengths.get("tokenizer.ggml.tokens")
    if vocab:
        out["vocab_size"] = int(vocab)
    out["tie_word_embeddings"] = "output.weight" not in header.tensors
    return out


# ----------------------------------------------------------------------------------------- hashing
_NONFINITE_BITS = {"F32": ("<u4", 0x7F800000), "F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80),
                   "F64": ("<u8", 0x7FF0000000000000)}


class GGUFFeeder:
    """Running digest of one GGUF tensor (or expert slice) for :func:`modellineage.reading.hashing.scan_file`:
    SHA-256 of its bytes; ``constant`` when every GGML block holds the same bytes; ``nonfinite`` from the
    bit patterns of plain floats, from the dequantised values of quantised rows (a NaN or Inf scale).
    Bytes are checked in whole stored rows (GGML blocks never cross one); a partial row is carried."""

    def __init__(self, info: GGUFTensorInfo) -> None:
        self.info = info
        self.hasher = hashlib.sha256()
        self.block_bytes = info.row_bytes // (info.cols // GGML_BLOCK[info.ggml_type]) if info.cols else 1
        self.first: np.ndarray | None = None
        self.constant = True
        self.nonfinite = 0
        self.carry = b""

    def feed(self, piece) -> None:
        info = self.info
        self.hasher.update(piece)
        unit = info.row_bytes
        data = self.carry + bytes(piece)
        whole = len(data) // unit * unit
        self.carry = data[whole:]
        if not whole:
            return
        rows = np.frombuffer(data[:whole], dtype=np.uint8).reshape(-1, unit)
        blocks = rows.reshape(-1, self.block_bytes)
        if self.first is None:
            self.first = blocks[0].copy()
        if self.constant and not np.all(blocks == self.first):
            self.constant = False
        if info.dtype in _NONFINITE_BITS:
            kind, mask = _NONFINITE_BITS[info.dtype]
            arr = np.frombuffer(data[:whole], dtype=kind)
            self.nonfinite += int(np.count_nonzero((arr & np.array(mask, dtype=kind)) == np.array(mask, dtype=kind)))
        elif info.is_float:
            from gguf import GGMLQuantizationType
            from gguf.quants import dequantize

            with np.errstate(invalid="ignore", over="ignore"):
                values = dequantize(rows, GGMLQuantizationType(info.ggml_type))
            self.nonfinite += int(values.size - np.count_nonzero(np.isfinite(values)))

    def digest(self, rows: tuple[int, ...] | None = None):
        from modellineage.reading.hashing import TensorDigest

        info = self.info
        return TensorDigest(info.name, info.dtype, tuple(info.shape), info.end - info.begin, self.hasher.hexdigest(),
                            bool(self.constant), int(self.nonfinite), rows)


class _BlockSizes(dict):
    """GGML type -> elements per block (``gguf.GGML_QUANT_SIZES``), looked up on first use."""

    def __missing__(self, ggml_type: int) -> int:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        self[ggml_type] = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)][0]
        return self[ggml_type]


GGML_BLOCK = _BlockSizes()


def scan_gguf(path: str | os.PathLike[str], *, chunk_bytes: int = 16 << 20,
              progress: Callable[[int], object] | None = None):
    """SHA-256 of a GGUF file and of each tensor's byte range (per expert for stacked experts), named
    as :class:`GGUFStore` names them, in one sequential pass (:func:`modellineage.reading.hashing.scan_file`
    with one :class:`GGUFFeeder` per tensor)."""
    from modellineage.reading.hashing import FileDigest, scan_file

    path = Path(path)
    header = read_gguf_header(path)
    feeders = [GGUFFeeder(info) for info in _virtual_tensors(header, []).values()]
    _, sha = scan_file(path, feeders, expected_size=header.size, chunk_bytes=chunk_bytes, progress=progress)
    return FileDigest(str(path), header.size, sha, tuple(f.digest() for f in feeders))
