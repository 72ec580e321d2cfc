"""Training logs: does a disclosed log show the run that was claimed?

Formats (decided by the file name): JSON lines (``.jsonl``, ``.ndjson``, ``.json``: one object per line,
nested objects flattened with ``/``), CSV (``.csv``, ``.tsv``: a Weights & Biases history export with
``_step`` and ``train/loss`` columns, or its UI export whose columns read ``run-name - train/loss``;
``__MIN``/``__MAX`` columns are ignored), and TensorBoard event files (``events.out.tfevents.*``: the
TFRecord framing is read here, each record decoded with TensorBoard's ``Event`` protobuf from bytes).

A log is a hostile file like any other: it is vetted (:mod:`modellineage.reading.confine`: a regular file,
not a link out of its folder), read whole only up to :data:`MAX_LOG_BYTES`, at most :data:`MAX_LOG_ROWS`
rows are kept, and any parser failure is a :class:`~modellineage.errors.CorruptCheckpoint` naming the file.

Columns are found by name (:data:`FIELDS`); a field no column provides is recorded as missing and never
guessed. Measured (:func:`measure_log`):

- the first logged loss against ln(V): a model whose logits do not depend on the data (any random
  initialisation) has an expected cross-entropy of at least ln(V), by Jensen's inequality
  (``E[logsumexp z] >= ln V + mean z``), so a from-scratch run starts at or above ln(V) and a run
  initialised from a trained model starts below it;
- whether the loss falls (mean of the last tenth of the logged values below that of the first tenth);
- logged tokens per step against batch size x sequence length, and the logged (or implied) total;
- the learning rate against the claimed schedule (linear warm-up, then constant, linear or cosine decay
  to ``min_lr``): the largest deviation as a share of the claimed peak.
"""

from __future__ import annotations

import csv
import io
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modellineage.errors import CorruptCheckpoint, Refused, SourceNotFound, UnsupportedFormat
from modellineage.plan import LogClaim  # the plan declares it; re-exported here for the family's callers
from modellineage.reading import boundary, confine

__all__ = ["MAX_LOG_BYTES", "MAX_LOG_ROWS", "FIELDS", "LogSeries", "LogClaim", "LogEvidence", "read_log",
           "measure_log", "expected_lr", "SCHEDULES"]

#: Largest log file read (whole, then parsed): 64 MiB holds ~600,000 JSON lines of a few metrics.
MAX_LOG_BYTES = 64 << 20
#: Most rows (distinct steps) kept from one log.
MAX_LOG_ROWS = 1_000_000
#: Most points of a series kept in the evidence and plotted (evenly spaced, first and last included).
SERIES_POINTS = 400
#: Field -> column names that provide it (compared lower-case; the first present wins).
FIELDS: dict[str, tuple[str, ...]] = {
    "step": ("step", "_step", "global_step", "trainer/global_step", "train/global_step", "iteration", "iter",
             "steps"),
    "loss": ("loss", "train/loss", "train_loss", "training_loss", "train/lm_loss", "lm_loss", "lm loss",
             "train/loss_step", "loss/train"),
    "lr": ("lr", "learning_rate", "train/lr", "train/learning_rate", "optimizer/lr", "lr-adamw", "learning-rate",
           "lr/train"),
    "tokens": ("tokens", "train/tokens", "consumed_tokens", "train/consumed_tokens", "num_tokens", "tokens_seen",
               "num_input_tokens_seen", "train/num_input_tokens_seen", "consumed-tokens", "tokens/train"),
}
SCHEDULES = ("constant", "linear", "cosine")
_TB_MARK = "tfevents"


@dataclass(frozen=True)
class LogSeries:
    """The fields of one log, row by row, sorted by step (rows without a loss dropped)."""

    file: str
    format: str
    columns: Mapping[str, str | None]
    """Field -> the column that provided it (None: missing)."""
    steps: np.ndarray
    loss: np.ndarray
    lr: np.ndarray | None
    tokens: np.ndarray | None
    rows_read: int
    notes: tuple[str, ...] = ()

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(f for f, c in self.columns.items() if c is None)


@dataclass(frozen=True)
class LogEvidence:
    """Everything measured about one training log."""

    name: str
    file: str
    format: str
    columns: Mapping[str, str | None]
    missing: tuple[str, ...]
    notes: tuple[str, ...]
    claim: LogClaim
    vocab_size: int | None
    ln_vocab: float | None
    rows: int
    first_step: int
    last_step: int
    first_loss: float
    first_offset: float | None
    """``first_loss - ln(V)``."""
    start_mean: float
    end_mean: float
    steps: int
    """Updates the log covers: ``last_step - first_step + 1``."""
    tokens_last: float | None
    """The last logged token count (None: no token column)."""
    tokens_per_step: float | None
    """Median logged tokens per step between consecutive rows (None: no token column)."""
    tokens_trained: float | None
    tokens_basis: str
    lr_peak: float | None
    lr_peak_step: int | None
    lr_max_deviation: float | None
    """Largest |logged - claimed schedule| over the logged steps, as a share of the claimed peak."""
    lr_deviation_step: int | None
    series: Mapping[str, list] = field(default_factory=dict)

    @property
    def falls(self) -> bool:
        return self.end_mean < self.start_mean

    def as_dict(self) -> dict:
        return {"name": self.name, "file": self.file, "format": self.format, "columns": dict(self.columns),
                "missing": list(self.missing), "notes": list(self.notes), "claim": self.claim.as_dict(),
                "vocab_size": self.vocab_size, "ln_vocab": self.ln_vocab, "rows": self.rows,
                "first_step": self.first_step, "last_step": self.last_step, "first_loss": self.first_loss,
                "first_offset": self.first_offset, "start_mean": self.start_mean, "end_mean": self.end_mean,
                "falls": self.falls, "steps": self.steps, "tokens_last": self.tokens_last,
                "tokens_per_step": self.tokens_per_step, "tokens_trained": self.tokens_trained,
                "tokens_basis": self.tokens_basis, "lr_peak": self.lr_peak, "lr_peak_step": self.lr_peak_step,
                "lr_max_deviation": self.lr_max_deviation, "lr_deviation_step": self.lr_deviation_step,
                "series": dict(self.series)}


# ----------------------------------------------------------------------------------------- reading
def _read(path: Path) -> bytes:
    refusal = confine.vet(path, confine.bounds_for(path), entry=path.name, role="log")
    if refusal is not None:
        raise Refused(refusal.message)
    return boundary.read_bytes(path, "training log", MAX_LOG_BYTES)


def _number(value) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        v = float(value)
    elif isinstance(value, str) and len(value) <= 64:
        try:
            v = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return v if math.isfinite(v) else None


def _flatten(obj: Mapping, prefix: str = "", depth: int = 0) -> dict:
    out = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and depth < 4:
            out.update(_flatten(v, key + "/", depth + 1))
        else:
            out[key] = v
    return out


def _jsonl_rows(data: bytes, path: Path) -> list[dict]:
    rows = []
    with boundary.guard(path, "training log is not UTF-8 JSON lines"):
        text = data.decode("utf-8")
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        obj = boundary.loads_json(line, path, f"training log line {i + 1}", expect=dict)
        rows.append(_flatten(obj))
        if len(rows) > MAX_LOG_ROWS:
            raise CorruptCheckpoint(f"{path}: more than {MAX_LOG_ROWS:,} rows, above the safety limit "
                                    "(MAX_LOG_ROWS, modellineage.training.logs)")
    return rows


def _csv_rows(data: bytes, path: Path) -> list[dict]:
    with boundary.guard(path, "training log is not a UTF-8 CSV file"):
        text = data.decode("utf-8-sig")
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        reader = csv.reader(io.StringIO(text), delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return []
        names = []
        for col in header:
            name = col.strip()
            if " - " in name:  # W&B UI export: "<run name> - train/loss"
                name = name.rsplit(" - ", 1)[1]
            names.append(None if name.endswith(("__MIN", "__MAX")) else name)
        rows = []
        for values in reader:
            rows.append({n: v for n, v in zip(names, values) if n is not None and v != ""})
            if len(rows) > MAX_LOG_ROWS:
                raise CorruptCheckpoint(f"{path}: more than {MAX_LOG_ROWS:,} rows, above the safety limit "
                                        "(MAX_LOG_ROWS, modellineage.training.logs)")
    return rows


def _tensor_scalar(tensor) -> float | None:
    if tensor.float_val:
        return float(tensor.float_val[0])
    if tensor.double_val:
        return float(tensor.double_val[0])
    content = tensor.tensor_content
    if tensor.dtype == 1 and len(content) == 4:  # DT_FLOAT
        return float(struct.unpack("<f", content)[0])
    if tensor.dtype == 2 and len(content) == 8:  # DT_DOUBLE
        return float(struct.unpack("<d", content)[0])
    return None


def _tensorboard_rows(data: bytes, path: Path) -> list[dict]:
    """Scalars of a TensorBoard event file, one row per step (the last value of a tag at a step wins)."""
    from tensorboard.compat.proto import event_pb2

    by_step: dict[int, dict] = {}
    pos, size = 0, len(data)
    while pos < size:
        if size - pos < 12:
            raise CorruptCheckpoint(f"{path}: TensorBoard event file truncated at byte {pos:,} (record header)")
        (length,) = struct.unpack_from("<Q", data, pos)
        if length > size - pos - 16:
            raise CorruptCheckpoint(f"{path}: TensorBoard record at byte {pos:,} declares {length:,} bytes, more "
                                    f"than the file holds")
        record = data[pos + 12: pos + 12 + length]
        pos += 16 + length
        with boundary.guard(path, "not a TensorBoard event file"):
            event = event_pb2.Event.FromString(record)
        if not event.HasField("summary"):
            continue
        step = int(event.step)
        row = by_step.setdefault(step, {"step": step})
        for value in event.summary.value:
            kind = value.WhichOneof("value")
            scalar = float(value.simple_value) if kind == "simple_value" else \
                _tensor_scalar(value.tensor) if kind == "tensor" else None
            if scalar is not None:
                row[value.tag] = scalar
        if len(by_step) > MAX_LOG_ROWS:
            raise CorruptCheckpoint(f"{path}: more than {MAX_LOG_ROWS:,} steps, above the safety limit "
                                    "(MAX_LOG_ROWS, modellineage.training.logs)")
    return [by_step[s] for s in sorted(by_step)]


def _format(path: Path) -> str:
    name = path.name.lower()
    if _TB_MARK in name:
        return "tensorboard"
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if path.suffix.lower() in (".csv", ".tsv"):
        return "csv"
    raise UnsupportedFormat(f"{path}: not a training log format read here (JSON lines .jsonl/.ndjson/.json, "
                            f"CSV/TSV incl. W&B history exports, TensorBoard events.out.tfevents.*)")


def read_log(path: Path | str) -> LogSeries:
    """Read one training log (see the module docstring for formats and limits).

    Raises:
        UnsupportedFormat: an unknown format, or no loss column.
        CorruptCheckpoint: unreadable or over the safety limits (names the file).
        Refused: the path is a link out of its folder or not a regular file.
        SourceNotFound: no such file.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise SourceNotFound(f"{path}: no such training log")
    fmt = _format(path)
    data = _read(path)
    rows = {"jsonl": _jsonl_rows, "csv": _csv_rows, "tensorboard": _tensorboard_rows}[fmt](data, path)
    present: dict[str, str] = {}
    for row in rows:
        for key in row:
            present.setdefault(key.lower(), key)
    columns: dict[str, str | None] = {}
    for fld, names in FIELDS.items():
        columns[fld] = next((present[n] for n in names if n in present), None)
    notes = []
    if columns["loss"] is None:
        raise UnsupportedFormat(f"{path}: no training loss column (looked for {', '.join(FIELDS['loss'])}; "
                                f"found {len(present)} columns)")
    table = []
    dropped = 0
    for i, row in enumerate(rows):
        loss = _number(row.get(columns["loss"]))
        if loss is None:
            dropped += 1
            continue
        step = _number(row.get(columns["step"])) if columns["step"] else float(i)
        if step is None:
            dropped += 1
            continue
        lr = _number(row.get(columns["lr"])) if columns["lr"] else None
        tokens = _number(row.get(columns["tokens"])) if columns["tokens"] else None
        table.append((step, loss, math.nan if lr is None else lr, math.nan if tokens is None else tokens))
    if columns["step"] is None:
        notes.append("no step column: the row order is taken as the step")
    if dropped:
        notes.append(f"{dropped} row(s) without a finite loss or step left out")
    if not table:
        raise UnsupportedFormat(f"{path}: no row with a finite loss and step")
    arr = np.array(sorted(table, key=lambda r: r[0]), dtype=np.float64)
    return LogSeries(file=str(path), format=fmt, columns=columns, steps=arr[:, 0], loss=arr[:, 1],
                     lr=arr[:, 2] if columns["lr"] else None, tokens=arr[:, 3] if columns["tokens"] else None,
                     rows_read=len(rows), notes=tuple(notes))


# ----------------------------------------------------------------------------------------- measuring
def expected_lr(steps: np.ndarray, claim: LogClaim, total: int, offset: int = 1) -> np.ndarray:
    """The claimed schedule at ``steps``: linear warm-up ``lr * (step + offset) / warmup`` over
    ``warmup_steps``, then ``schedule`` from ``lr`` to ``min_lr`` at ``total`` steps."""
    peak, warm, low = float(claim.lr), int(claim.warmup_steps or 0), float(claim.min_lr)
    s = np.asarray(steps, dtype=np.float64)
    t = np.clip((s - warm) / max(1.0, total - warm), 0.0, 1.0)
    if claim.schedule == "cosine":
        decay = low + (peak - low) * 0.5 * (1.0 + np.cos(np.pi * t))
    elif claim.schedule == "linear":
        decay = peak - (peak - low) * t
    else:
        decay = np.full_like(s, peak)
    if warm > 0:
        return np.where(s < warm, peak * np.minimum(1.0, (s + offset) / warm), decay)
    return decay


def _points(n: int) -> np.ndarray:
    if n <= SERIES_POINTS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, SERIES_POINTS).round().astype(np.int64))


def measure_log(path: Path | str, *, name: str = "log", vocab_size: int | None = None,
                claim: LogClaim | None = None) -> LogEvidence:
    """Read a training log and measure it against ln(vocab_size) and the claim.

    Args:
        path: the log file.
        name: the log's name in the plan.
        vocab_size: the model's vocabulary size (None: the ln(V) figures are not measured).
        claim: what the plan claims about the run (default: from scratch, nothing else).

    Returns:
        A :class:`LogEvidence`; missing fields are recorded (``missing``), never guessed.
    """
    claim = claim or LogClaim()
    series = read_log(path)
    steps, loss = series.steps, series.loss
    n = loss.size
    tenth = max(1, n // 10)
    ln_v = math.log(vocab_size) if vocab_size else None
    first_step, last_step = int(steps[0]), int(steps[-1])
    covered = last_step - first_step + 1
    tokens_last = tokens_per_step = None
    if series.tokens is not None:
        tok = series.tokens
        ok = np.isfinite(tok)
        if ok.any():
            tokens_last = float(tok[ok][-1])
            ds, dt = np.diff(steps[ok]), np.diff(tok[ok])
            good = ds > 0
            if good.any():
                tokens_per_step = float(np.median(dt[good] / ds[good]))
    if tokens_last is not None:
        tokens_trained, basis = tokens_last, f"last logged {series.columns['tokens']!r} value"
    elif claim.tokens_per_step:
        tokens_trained = float(covered * claim.tokens_per_step)
        basis = (f"no token column: {covered:,} logged steps (steps {first_step}-{last_step}) × batch "
                 f"{claim.batch_size} × sequence {claim.sequence_length}")
    else:
        tokens_trained, basis = None, "no token column and no claimed batch size × sequence length"
    lr_peak = lr_peak_step = lr_dev = lr_dev_step = None
    if series.lr is not None and np.isfinite(series.lr).any():
        lr = series.lr
        ok = np.isfinite(lr)
        i = int(np.argmax(np.where(ok, lr, -np.inf)))
        lr_peak, lr_peak_step = float(lr[i]), int(steps[i])
        if claim.lr and claim.schedule:
            total = claim.steps or covered
            best = None
            for offset in (0, 1):  # warm-up counted from step 0 or from step 1: both conventions are common
                dev = np.abs(lr[ok] - expected_lr(steps[ok] - first_step, claim, total, offset)) / claim.lr
                j = int(np.argmax(dev))
                if best is None or dev[j] < best[0]:
                    best = (float(dev[j]), int(steps[ok][j]))
            lr_dev, lr_dev_step = best
    idx = _points(n)
    plotted = {"step": [int(s) for s in steps[idx]], "loss": [float(v) for v in loss[idx]]}
    if series.tokens is not None:
        plotted["tokens"] = [float(v) if math.isfinite(v) else None for v in series.tokens[idx]]
    if series.lr is not None:
        plotted["lr"] = [float(v) if math.isfinite(v) else None for v in series.lr[idx]]
    return LogEvidence(
        name=name, file=series.file, format=series.format, columns=series.columns, missing=series.missing,
        notes=series.notes, claim=claim, vocab_size=vocab_size, ln_vocab=ln_v, rows=n, first_step=first_step,
        last_step=last_step, first_loss=float(loss[0]), first_offset=None if ln_v is None else float(loss[0]) - ln_v,
        start_mean=float(loss[:tenth].mean()), end_mean=float(loss[-tenth:].mean()),
        steps=covered,
        tokens_last=tokens_last, tokens_per_step=tokens_per_step, tokens_trained=tokens_trained, tokens_basis=basis,
        lr_peak=lr_peak, lr_peak_step=lr_peak_step, lr_max_deviation=lr_dev, lr_deviation_step=lr_dev_step,
        series=plotted)
