"""The pytest layer: options, the audit plan, lazy model fixtures, evidence JSON and the HTML report.

Loaded as the ``pytest11`` entry point ``audits.plugin`` (pyproject.toml), before pytest reads the
command line for test paths: ``--target DIR`` is an option, never a test path whose conftest.py pytest
would import. It becomes active only for an *audit run* — when the command line points into
``audits/`` or passes one of the audit options — so ``pytest tests/`` is untouched.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import html
import os
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from modellineage.errors import IncompatibleShapes, LineageError, PlanError, UnsupportedFormat
from modellineage.plan import FAMILIES, AuditPlan, Reference, load_plan, override_plan
from modellineage.reading import confine, progress, remote
from modellineage.reading.model import DigestCache, Model
from modellineage.reading.sources import named_path, resolve_source
from modellineage.reporting import evidence as ev
from modellineage.reporting import headline, report

from .criteria import Judgement, Thresholds, catalog_coverage, claim_coverage, load_thresholds

AUDITS_DIR = Path(__file__).resolve().parent
ROOT = AUDITS_DIR.parent
SESSION_KEY = pytest.StashKey["AuditSession"]()
RECORD_KEY = pytest.StashKey["AuditRecord"]()
# LineageErrors that mean "this measurement cannot be made here" (shown as a skip with the reason);
# every other LineageError (corrupt file, NaN weights, missing shard) fails the audit that needed it.
SKIP_ERRORS = (UnsupportedFormat, IncompatibleShapes)


# ----------------------------------------------------------------------------------------- options
def pytest_addoption(parser: pytest.Parser) -> None:
    """Audit options, grouped under 'provenance audit'."""
    group = parser.getgroup("audit", "provenance audit")
    group.addoption("--audit", metavar="FILE", help="audit plan (TOML); default: audit.toml at the project root")
    group.addoption("--target", metavar="SOURCE", help="model to audit: directory, .safetensors file, cached repo id, "
                                                     "hf://org/name[@revision] or an https:// URL")
    group.addoption("--reference", metavar="NAME=SOURCE", action="append", default=None,
                    help="reference model (repeatable); replaces the plan's references; needs --expect")
    group.addoption("--expect", choices=("independent", "derived"),
                    help="expected relation of the target to every reference (overrides the plan)")
    group.addoption("--thresholds", metavar="FILE", help="thresholds file; default: thresholds.toml at the root")
    group.addoption("--evidence", metavar="PATH", help="evidence JSON; default: reports/evidence.json")
    group.addoption("--allow-download", action="store_true", default=False,
                    help="allow network access: repo ids missing from the local Hugging Face cache are downloaded; "
                         "remote sources (hf://org/name@rev, https://...) are read by byte ranges")
    group.addoption("--verify-hashes", action="store_true", default=False,
                    help="compute every input file's SHA-256 over its full content (fetching remote files whole), "
                         "even where the hub's LFS metadata or an HF cache blob name already gives it, and check both agree")
    group.addoption("--against-catalog", choices=("independent",), default=None,
                    help="claim the target is independent of every known model in the catalog (overrides "
                         "[catalog].expect): a catalog tokenizer, an extension of one or a pruned copy of one fails")
    group.addoption("--sample", metavar="FRACTION", type=_sample_fraction, default=None,
                    help="weight audits read a seeded random share of rows per tensor (e.g. 0.1) and report "
                         "95%% bootstrap intervals; default: every row")
    group.addoption("--behaviour", action="store_true", default=False,
                    help="run the behaviour audits (sets [behaviour].run): every model answers the probe sets, "
                         "locally or through the endpoint the plan names")
    group.addoption("--budget", metavar="BYTES|FRACTION", type=_budget, default=None,
                    help="read budget per pair for the weight and independence audits: a share of the pair's "
                         "bytes (0.01, 1%%) or bytes (4GB); they choose what to read and report what it costs "
                         "(sets [options].budget)")
    group.addoption("--all-experts", action="store_true", default=False,
                    help="the independence test tests every routed expert of an MoE layer, not a seeded choice of "
                         "at most 16 per layer (sets [options].all_experts)")
    group.addoption("--allow-untested", action="store_true", default=False,
                    help="accept a claim that no audit could measure and judge (sets [options].allow_untested); "
                         "by default such a claim fails the run")


def _sample_fraction(text: str) -> float:
    """--sample FRACTION: a share of rows in (0, 1]."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sample needs a fraction in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"--sample needs a fraction in (0, 1], got {value}")
    return value


def _budget(text: str):
    """--budget BYTES|FRACTION (modellineage.weights.budget.parse_budget)."""
    import argparse

    from modellineage.weights.budget import parse_budget

    try:
        return parse_budget(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--budget: {exc}") from None


#: Seed of the row sample of --sample (recorded in evidence.json under seeds["weights.sample"]).
SAMPLE_SEED = 0


def once(cache: dict, key, compute):
    """``compute()`` once per ``key`` for the session; a LineageError is kept and raised again to every
    audit that asks, so a measurement that cannot be made is not attempted once per audit."""
    if key not in cache:
        try:
            cache[key] = compute()
        except LineageError as exc:
            cache[key] = exc
    found = cache[key]
    if isinstance(found, LineageError):
        raise found
    return found

_AUDIT_OPTIONS = ("audit", "target", "reference", "expect", "thresholds", "evidence", "against_catalog",
                  "allow_untested")


def _is_audit_run(config: pytest.Config) -> bool:
    if any(config.getoption(o) for o in _AUDIT_OPTIONS):
        return True
    for arg in config.args:
        path = Path(arg.split("::")[0])
        path = (Path(config.invocation_params.dir) / path).resolve()
        if path == AUDITS_DIR or AUDITS_DIR in path.parents:
            return True
    return False


# ----------------------------------------------------------------------------------------- session
@dataclass
class AuditRecord:
    """What one audit measured and decided; becomes one entry of evidence.json."""

    nodeid: str
    family: str
    subject: str
    expectation: str | None
    measurements: dict = field(default_factory=dict)
    judgement: Judgement | None = None
    sentence: str = ""
    extras: list = field(default_factory=list)
    outcome: str = "not run"
    message: str = ""

    def as_dict(self) -> dict:
        return {"nodeid": self.nodeid, "family": self.family, "subject": self.subject,
                "expectation": self.expectation, "measurements": self.measurements,
                "judgement": self.judgement, "summary": self.sentence,
                "outcome": self.outcome, "message": self.message}


class AuditSession:
    """The plan, thresholds and lazily opened models of one pytest session."""

    def __init__(self, plan: AuditPlan, thresholds: Thresholds, evidence_path: Path, allow_download: bool):
        self.plan = plan
        self.thresholds = thresholds
        self.evidence_path = evidence_path
        self.digests = DigestCache()
        self.sources = {}
        if plan.target_source is None:
            raise PlanError("no target: give [target].source in the audit plan or --target SOURCE")
        self.sources[plan.target_name] = resolve_source(plan.target_source, base_dir=plan.base_dir,
                                                        allow_download=allow_download)
        for ref in plan.references:
            self.sources[ref.name] = resolve_source(ref.source, base_dir=plan.base_dir,
                                                    allow_download=allow_download)
        # The target's checkpoint chain: a checkpoint that cannot be found is not a usage error, its link of
        # the chain is skipped with the reason (audits/test_training.py) and the rest is audited.
        self.checkpoint_sources: dict[str, tuple[object | None, str | None]] = {}
        for spec in plan.checkpoints:
            try:
                self.checkpoint_sources[spec.name] = (resolve_source(spec.source, base_dir=plan.base_dir,
                                                                     allow_download=allow_download), None)
            except LineageError as exc:
                self.checkpoint_sources[spec.name] = (None, str(exc))
        self.log_paths: dict[str, Path] = {log.name: named_path(plan.base_dir / Path(log.source).expanduser())
                                           for log in plan.logs}
        self._checkpoint_models: dict[str, Model] = {}
        self._models: dict[str, Model] = {}
        self.records: list[AuditRecord] = []
        self.seeds: dict[str, int] = {}  # every seed a measurement used (sampling), by purpose
        self.sample: float | None = None  # --sample: share of rows the weight audits read
        self.budget = None  # --budget / [options].budget: a modellineage.weights.budget.ReadBudget
        self.all_experts = False  # --all-experts / [options].all_experts: every routed expert in the independence test
        self.inputs: list[dict] = []  # filled when the evidence is written, shown in the report
        self.versions: dict[str, str | None] = {}
        self.html_path: Path | None = None  # where the report goes (pytest-html writes a temporary file first)
        self.html_tmp: Path | None = None
        self.collection_errors: list[str] = []  # node ids whose collection failed
        self.incomplete: str | None = None  # why this run's evidence is partial (None: complete)
        self.problems: list[str] = []  # what went wrong while writing evidence or report (terminal summary)
        self.reached: set[str] = set()  # node ids of the audits that reached an outcome

    def model(self, name: str) -> Model:
        """The model of that name, opened on first use (reading nothing yet)."""
        if name not in self._models:
            self._models[name] = Model(name, self.sources[name], self.digests)
        return self._models[name]

    def checkpoint_model(self, name: str) -> Model | None:
        """The checkpoint of that name, opened on first use (None when its source was not found)."""
        source, _ = self.checkpoint_sources[name]
        if source is None:
            return None
        if name not in self._checkpoint_models:
            self._checkpoint_models[name] = Model(name, source, self.digests)
        return self._checkpoint_models[name]

    @property
    def subjects(self) -> list[str]:
        return [self.plan.target_name] + [r.name for r in self.plan.references]

    def close(self) -> None:
        for model in [*self._models.values(), *self._checkpoint_models.values()]:
            model.close()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Register markers; for an audit run, load plan and thresholds and default the HTML report."""
    for family in FAMILIES:
        config.addinivalue_line("markers", f"{family}: {family} evidence (provenance audit family)")
    config.addinivalue_line("markers", "claims: was every claim tested by an audit (runs last)")
    if not _is_audit_run(config) or hasattr(config, "workerinput"):
        return
    if (config.getoption("numprocesses", None) or 0) not in (0, "0"):
        raise pytest.UsageError("audits record their evidence in one process: run `pytest audits/` without -n")
    root = Path(config.rootpath)
    try:
        audit_file = config.getoption("audit")
        cli_only = audit_file is None and (config.getoption("target") or config.getoption("reference"))
        plan = None if cli_only else load_plan(Path(audit_file) if audit_file else root / "audit.toml")
        plan = override_plan(plan, target=config.getoption("target"), references=config.getoption("reference"),
                             expect=config.getoption("expect"), against_catalog=config.getoption("against_catalog"),
                             allow_untested=config.getoption("allow_untested"),
                             behaviour=config.getoption("behaviour"),
                             base_dir=Path(config.invocation_params.dir))
        if config.getoption("all_experts", False):  # recorded in the evidence's plan like every option
            plan = replace(plan, options={**plan.options, "all_experts": True})
        thresholds = load_thresholds(Path(config.getoption("thresholds") or root / "thresholds.toml"))
        evidence_path = Path(config.invocation_params.dir) / (config.getoption("evidence")
                                                              or root / "reports" / "evidence.json")
        session = AuditSession(plan, thresholds, evidence_path, config.getoption("allow_download"))
        session.sample = config.getoption("sample", None)
        budget = config.getoption("budget", None)
        if budget is None and plan.options.get("budget") is not None:
            from modellineage.weights.budget import parse_budget

            budget = parse_budget(plan.options["budget"])
        if budget is not None and session.sample is not None:
            raise PlanError("--budget and --sample both choose what the weight audits read: give one")
        session.budget = budget
        session.all_experts = bool(plan.options.get("all_experts", False))
        if session.all_experts and budget is not None:
            raise PlanError("--all-experts and --budget: the budget's plan chooses which experts the independence "
                            "test reads; give one")
        session.digests.verify = bool(config.getoption("verify_hashes", False))
        # a partial read (a row sample or a read budget) never fetches remote files whole
        session.digests.full_read = session.sample is None and session.budget is None
        # a read budget: tensor digests on one seeded row each, no whole-file SHA-256 of local weights
        session.digests.budget = budget
        if session.sample is not None:
            session.seeds["weights.sample"] = SAMPLE_SEED
    except LineageError as exc:
        raise pytest.UsageError(str(exc)) from None
    _lock_evidence(config, session.evidence_path)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(_CollectionWatch(session), "modellineage-collection-watch")
    # pytest-html registered (as an entry point, or by `-p pytest_html.plugin` under
    # PYTEST_DISABLE_PLUGIN_AUTOLOAD); without it (`-p no:html`) the run writes evidence only.
    if config.pluginmanager.hasplugin("html") or config.pluginmanager.hasplugin("pytest_html.plugin"):
        if not config.getoption("htmlpath", None):
            config.option.htmlpath = str(root / "reports" / "audit.html")
        config.option.self_contained_html = True
        # pytest-html writes the report in place; it writes a hidden file beside it instead, which
        # session finish renames over the report only when the run completed (see _place_report).
        session.html_path = Path.cwd() / Path(os.path.expandvars(config.option.htmlpath)).expanduser()
        _check_writable(session.html_path, "the HTML report")
        session.html_tmp = session.html_path.with_name(f".{session.html_path.name}.{os.getpid()}.tmp")
        config.option.htmlpath = str(session.html_tmp)
    _configure_progress(config)


def _check_writable(path: Path, what: str) -> None:
    """A usage error now, not a lost report at the end, when ``path``'s folder cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise pytest.UsageError(f"cannot write {what} to {path}: {exc.strerror or type(exc).__name__} "
                                f"({exc.filename or path.parent}); pass another path") from None


def _lock_evidence(config: pytest.Config, evidence_path: Path) -> None:
    """Hold ``<evidence>.lock`` for the whole run; a second run on the same evidence path fails fast.

    Failing fast rather than waiting: a run can take hours on large models, and a CI job silently
    queued behind another is worse than one that says which file is busy and how to choose another.
    The lock is released when the run ends (or its process dies); the lock file stays.
    """
    _check_writable(evidence_path, "evidence")
    lock_path = evidence_path.with_name(evidence_path.name + ".lock")
    try:
        handle = open(lock_path, "a+b")
    except OSError as exc:
        raise pytest.UsageError(f"cannot write evidence to {evidence_path}: cannot open its lock file "
                                f"{lock_path} ({exc.strerror or type(exc).__name__})") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise pytest.UsageError(f"another audit run is writing {evidence_path} (it holds {lock_path}); wait for "
                                "it to finish, or give this run its own --evidence PATH and --html PATH") from None
    config.add_cleanup(handle.close)


def _configure_progress(config: pytest.Config) -> None:
    """Bars go to a duplicate of the terminal taken now, while capturing is suspended (off under -q)."""
    stream = None
    try:
        if sys.stderr.isatty():
            stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
            config.add_cleanup(stream.close)
    except (AttributeError, OSError, ValueError):  # stderr replaced by something without a descriptor
        stream = None
    progress.configure(enabled=config.get_verbosity() >= 0 and stream is not None, stream=stream)


def _session(config: pytest.Config) -> AuditSession | None:
    return config.stash.get(SESSION_KEY, None)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `reference` over the plan's references and `subject` over target + references."""
    session = _session(metafunc.config)
    if session is None:
        return
    if "reference" in metafunc.fixturenames:
        refs = list(session.plan.references)
        metafunc.parametrize("reference", refs, ids=[r.name for r in refs], indirect=True)
    if "subject" in metafunc.fixturenames:
        names = session.subjects
        metafunc.parametrize("subject", names, ids=names, indirect=True)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """The claim-coverage audits (audits/test_claims.py, marker ``claims``) run last, after every audit they
    count (trylast: after pytest groups items by session-scoped parameters, which would interleave them). ``-m FAMILY`` deselects them like any other family: a one-family run is not the gate."""
    if _session(config) is None:
        return
    claims = [item for item in items if item.get_closest_marker("claims")]
    if not claims:
        return
    items[:] = [item for item in items if not item.get_closest_marker("claims")] + claims


# ----------------------------------------------------------------------------------------- fixtures
@dataclass(frozen=True)
class ReferenceHandle:
    """A reference of the plan with its lazily opened model."""

    spec: Reference
    model: Model

    @property
    def name(self) -> str:
        return self.spec.name

    def expectation(self, family: str) -> str:
        return self.spec.expectation(family)


@pytest.fixture(scope="session")
def audit_session(pytestconfig: pytest.Config) -> AuditSession:
    session = _session(pytestconfig)
    if session is None:
        pytest.skip("not an audit run (run `pytest audits/`)")
    return session


@pytest.fixture(scope="session")
def target(audit_session: AuditSession) -> Model:
    """The audited model (opened lazily)."""
    return audit_session.model(audit_session.plan.target_name)


@pytest.fixture(scope="session")
def reference(request: pytest.FixtureRequest, audit_session: AuditSession) -> ReferenceHandle:
    """One reference of the plan (parametrized; opened lazily)."""
    spec: Reference = request.param
    return ReferenceHandle(spec, audit_session.model(spec.name))


@pytest.fixture(scope="session")
def subject(request: pytest.FixtureRequest, audit_session: AuditSession) -> Model:
    """The target or one reference (parametrized), for audits of a model on its own."""
    return audit_session.model(request.param)


@pytest.fixture(scope="session")
def thresholds(audit_session: AuditSession) -> Thresholds:
    return audit_session.thresholds


@pytest.fixture(scope="session")
def claims(audit_session: AuditSession) -> dict:
    return dict(audit_session.plan.claims)


@pytest.fixture(scope="session")
def catalog_plan(audit_session: AuditSession) -> dict:
    """The plan's [catalog] table (``expect`` set by --against-catalog)."""
    return dict(audit_session.plan.catalog)


class Recorder:
    """What a test hands over for evidence.json and the report."""

    def __init__(self, record: AuditRecord) -> None:
        self._record = record

    def measured(self, name: str, value: Any) -> Any:
        """Record one measurement (a record with as_dict(), or plain data); returns it."""
        self._record.measurements[name] = ev.to_jsonable(value)
        return value

    def judged(self, judgement: Judgement) -> Judgement:
        self._record.judgement = judgement
        return judgement

    def says(self, sentence: str) -> None:
        """One plain-language sentence for the per-reference paragraph of the report."""
        self._record.sentence = sentence

    def html(self, html: str) -> None:
        from pytest_html import extras

        self._record.extras.append(extras.html(html))

    def png(self, data_b64: str, name: str) -> None:
        from pytest_html import extras

        self._record.extras.append(extras.png(data_b64, name))


@pytest.fixture
def evidence(request: pytest.FixtureRequest, audit_session: AuditSession) -> Recorder:
    """Records measurements and the judgement of the running audit."""
    return Recorder(request.node.stash[RECORD_KEY])


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Open an evidence record for every audit item."""
    session = _session(item.config)
    if session is None:
        return
    family = "claims" if item.get_closest_marker("claims") else \
        next((m.name for m in item.iter_markers() if m.name in FAMILIES), "other")
    params = getattr(getattr(item, "callspec", None), "params", {})
    ref = params.get("reference")
    subject = ref.name if isinstance(ref, Reference) else params.get("subject", session.plan.target_name)
    record = AuditRecord(item.nodeid, family, subject, ref.expectation(family) if isinstance(ref, Reference) else None)
    item.stash[RECORD_KEY] = record
    session.records.append(record)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Turn library errors into clear skips or failures, and hand evidence to the report."""
    outcome = yield
    rep = outcome.get_result()
    record = item.stash.get(RECORD_KEY, None)
    audit = _session(item.config)
    if audit is not None and (rep.when == "call" or (rep.when == "setup" and not rep.passed)):
        audit.reached.add(item.nodeid)  # also an item skipped before its record was opened (skip marks)
    if call.excinfo is not None and call.excinfo.errisinstance(LineageError):
        message = str(call.excinfo.value)
        if call.excinfo.errisinstance(SKIP_ERRORS):
            rep.outcome = "skipped"
            rep.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: cannot measure: {message}")
        else:
            rep.outcome = "failed"
            rep.longrepr = f"{type(call.excinfo.value).__name__}: {message}"
    if record is None:
        return
    judgement = record.judgement
    if rep.when == "call" and rep.failed and judgement is not None and judgement.failed \
            and call.excinfo is not None and call.excinfo.errisinstance(AssertionError):
        session = _session(item.config)
        # The claim and where its evidence is, not the test's source code.
        rep.longrepr = f"{judgement.message}\nevidence: {session.evidence_path} (audit {item.nodeid})"
    if rep.when == "call" or (rep.when == "setup" and not rep.passed):
        record.outcome = rep.outcome
        if rep.skipped and isinstance(rep.longrepr, tuple):
            record.message = str(rep.longrepr[2]).removeprefix("Skipped: ")
        elif rep.failed:
            record.message = record.judgement.message if record.judgement and record.judgement.failed \
                else str(rep.longrepr).strip().splitlines()[-1]
        elif record.judgement is not None:
            record.message = record.judgement.message
        else:
            record.message = record.sentence
    # record.extras (tables, plots) are shown in the report's section of the audit's family
    # (pytest_html_results_summary), not a second time in pytest-html's own table.


# ----------------------------------------------------------------------------------------- outputs
class _CollectionWatch:
    """Remembers collection errors: the audits of that module never ran, so the evidence is not complete."""

    def __init__(self, audit: AuditSession) -> None:
        self.audit = audit

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.audit.collection_errors.append(report.nodeid or "(session)")


def _incomplete_reason(session: pytest.Session, audit: AuditSession, exitstatus: int) -> str | None:
    """Why this run's evidence would not be complete, or None when every selected audit reached an outcome."""
    errors = sorted(set(audit.collection_errors))
    if errors:
        return f"{len(errors)} collection error(s) ({', '.join(errors[:5])}): their audits never ran"
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        return "the run was interrupted (Ctrl-C, or stopped before every audit ran)"
    if exitstatus == pytest.ExitCode.INTERNAL_ERROR:
        return "pytest reported an internal error"
    if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return f"the run ended with exit status {int(exitstatus)} ({pytest.ExitCode(exitstatus).name})"
    reached = audit.reached
    missing = [item.nodeid for item in session.items if item.nodeid not in reached]
    if missing:
        return (f"{len(missing)} of {len(session.items)} selected audits reached no outcome "
                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    return None


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    """Write the evidence, let pytest-html write its report, then put the report in place.

    Evidence is written whole (temporary file + rename). A run in which not every selected audit reached
    an outcome never replaces the last complete evidence or report: it writes ``evidence.partial.json``
    (``"complete": false`` and why) and ``<report>.partial.html``, and exits non-zero. Nothing that goes
    wrong here (an input file that vanished, a full disk, a bug) ends as a traceback without evidence.
    """
    audit = _session(session.config)
    if audit is None:
        return (yield)
    try:
        _write_evidence(session, audit, exitstatus)
        try:
            result = yield
        except Exception as exc:  # pytest-html (or another plugin) failed while writing its report
            audit.problems.append(f"the HTML report could not be written: {_describe(exc)}; "
                                  f"{audit.html_path} was left as it was")
            _fail(session, pytest.ExitCode.INTERNAL_ERROR, force=True)
            if audit.html_tmp is not None:
                _remove(audit.html_tmp)  # whatever part of it was written
            return None
        except BaseException:
            if audit.html_tmp is not None:
                _remove(audit.html_tmp)
            raise
        _place_report(session, audit)
        return result
    finally:
        audit.close()


def _fail(session: pytest.Session, code: int, *, force: bool = False) -> None:
    """Make the run's exit status non-zero: keep a non-zero status it already has, unless ``force`` (a
    verdict whose evidence or report could not be written must not read as an ordinary claim failure)."""
    if force or session.exitstatus in (pytest.ExitCode.OK, 0):
        session.exitstatus = code


def _describe(exc: BaseException) -> str:
    """One line about an exception, without quoting file contents (an OSError names only its file)."""
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or 'error'} ({exc.filename})"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}"


def _write_evidence(session: pytest.Session, audit: AuditSession, exitstatus: int) -> None:
    """evidence.json when the run completed, else evidence.partial.json; never raises an Exception."""
    root = Path(session.config.rootpath)
    try:
        audit.incomplete = _incomplete_reason(session, audit, exitstatus)
        document = _evidence_document(audit, root, exitstatus)
        if audit.incomplete is not None:
            document.update(complete=False, incomplete_reason=audit.incomplete)
        text = ev.dumps(ev.within(ev.to_jsonable(document), root, _renames(audit)))
    except Exception as exc:  # a bug while assembling the evidence: still leave a partial file behind
        audit.incomplete = f"the evidence could not be assembled: {_describe(exc)}"
        text = ev.dumps({"schema": ev.SCHEMA, "complete": False, "incomplete_reason": audit.incomplete,
                         "exit_status": int(exitstatus)})
        _fail(session, pytest.ExitCode.INTERNAL_ERROR)
    if audit.incomplete is not None:
        _fail(session, pytest.ExitCode.INTERRUPTED)
    target = audit.evidence_path if audit.incomplete is None else ev.partial_path(audit.evidence_path)
    try:
        ev.write_atomic(target, text)
    except Exception as exc:  # full disk, folder gone or read-only: the previous evidence is untouched
        audit.problems.append(f"evidence could not be written to {target}: {_describe(exc)}; "
                              f"{audit.evidence_path} was left as it was")
        audit.incomplete = audit.incomplete or "the evidence could not be written"  # the report is partial too
        _fail(session, pytest.ExitCode.INTERNAL_ERROR, force=True)
        return
    if audit.incomplete is None:
        _remove(ev.partial_path(audit.evidence_path))
    else:
        audit.problems.append(f"evidence is incomplete: {audit.incomplete}. Wrote {target}; "
                              f"{audit.evidence_path} (the last complete evidence) was left as it was")


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _place_report(session: pytest.Session, audit: AuditSession) -> None:
    """Rename pytest-html's temporary report over the report (complete run) or to ``<name>.partial.html``."""
    if audit.html_tmp is None or audit.html_path is None or not session.config.option.htmlpath:
        return
    final = audit.html_path if audit.incomplete is None else ev.partial_path(audit.html_path)
    if not audit.html_tmp.exists():
        audit.problems.append(f"no HTML report was written; {audit.html_path} was left as it was")
        _fail(session, pytest.ExitCode.INTERNAL_ERROR)
        return
    try:
        os.replace(audit.html_tmp, final)
    except OSError as exc:
        audit.problems.append(f"the HTML report could not be moved to {final}: {_describe(exc)}")
        _remove(audit.html_tmp)
        _fail(session, pytest.ExitCode.INTERNAL_ERROR)
        return
    if audit.incomplete is None:
        _remove(ev.partial_path(audit.html_path))
    for plugin in session.config.pluginmanager.get_plugins():  # pytest-html names its file in the summary
        if getattr(plugin, "_report_path", None) == audit.html_tmp:
            plugin._report_path = final


def _file_inputs(audit: AuditSession, root: Path) -> list[dict]:
    """Every input file with size and SHA-256; a file that vanished or cannot be read is recorded as such."""
    inputs = []
    for name in audit.subjects:
        for path in audit.sources[name].files():
            entry = {"model": name, "path": ev.display_path(path, root)}
            if remote.lookup(path) is not None or audit.sources[name].url is not None:
                entry["path"] = path.name  # a remote source's file, named by its URL (not the cache folder)
                entry["url"] = f"{audit.sources[name].url}{path.name}"
            try:
                record = audit.digests.input_record(path, label=f"{name}/{path.name}")
            except Exception as exc:  # noqa: BLE001 - vanished, unreadable, a parser bug: recorded per file
                entry.update(size=None, sha256=None, error=f"cannot read: {_describe(exc)}")
            else:
                entry.update(record)
            inputs.append(entry)
    for name, (source, _) in audit.checkpoint_sources.items():
        for path in source.files() if source is not None else ():
            inputs.append(_digest_entry(audit, f"checkpoint {name}", path, root))
    for name, path in audit.log_paths.items():
        refusal = confine.vet(path, confine.bounds_for(path), entry=path.name, role="log") \
            if path.exists() or path.is_symlink() else None
        if refusal is not None:  # a link out of its folder, a FIFO, a device: never opened, never hashed
            inputs.append({"model": f"log {name}", "path": ev.display_path(path, root), "size": None,
                           "sha256": None, "error": refusal.message})
            continue
        inputs.append(_digest_entry(audit, f"log {name}", path, root))
    return inputs


def _digest_entry(audit: AuditSession, model: str, path: Path, root: Path) -> dict:
    """Size and SHA-256 of one input file; a missing or unreadable one is recorded as such."""
    entry = {"model": model, "path": ev.display_path(path, root)}
    try:
        return entry | audit.digests.input_record(path, label=f"{model}/{path.name}")
    except Exception as exc:  # noqa: BLE001 - vanished, unreadable, a parser bug: recorded per file
        return entry | {"size": None, "sha256": None, "error": f"cannot read: {_describe(exc)}"}


def _evidence_document(audit: AuditSession, root: Path, exitstatus: int) -> dict:
    """The evidence document: plan, thresholds, every record, every input file with its SHA-256."""
    inputs = _file_inputs(audit, root)
    document = {
        "schema": ev.SCHEMA,
        "complete": True,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tool": ev.library_versions(),
        "machine": ev.machine_info(),
        "plan": _relative_plan(audit.plan, root),
        "sources": {n: _relative_source(audit.sources[n].as_dict(), root) for n in audit.subjects},
        "thresholds": {"file": ev.display_path(audit.thresholds.path, root),
                       "bounds": audit.thresholds.as_dict()["bounds"]},
        "inputs": inputs,
        "audits": sorted((r.as_dict() for r in audit.records), key=lambda r: r["nodeid"]),
        "seeds": dict(sorted(audit.seeds.items())),
        "exit_status": int(exitstatus),
        "claim_coverage": _claim_coverage(audit),
    }
    # One verdict per claim (what the report's cards say), for a CI gate: modellineage.reporting.headline.
    try:
        document["verdicts"] = headline.verdicts_document(
            audit.plan.target_name, document["claim_coverage"], ev.to_jsonable(document["audits"]),
            allow_untested=audit.plan.allow_untested)
    except Exception as exc:  # noqa: BLE001 - the audits' evidence still stands; a gate finds no "overall"
        document["verdicts"] = {"error": f"the verdicts could not be assembled: {_describe(exc)}"}
    network = _network(audit)
    if network is not None:
        document["network"] = network
    audit.inputs, audit.versions = inputs, document["tool"]
    return document


def _renames(audit: AuditSession) -> dict[str, str]:
    """A remote source's cache folder (machine-specific) -> its URL, for every path written out."""
    found = {}
    for source in audit.sources.values():
        if source.url is not None:
            for folder in {str(source.root), os.path.realpath(source.root)}:
                found[folder.rstrip("/") + "/"] = source.url if source.url.endswith("/") else source.url + "/"
    return found


def _network(audit: AuditSession) -> dict | None:
    """What this run fetched per remote file (None without remote sources). Unlike every other number in
    the evidence it depends on the range cache's state before the run (a second run fetches nothing)."""
    files = []
    for name in audit.subjects:
        for path in audit.sources[name].weight_files:
            far = remote.lookup(path)
            if far is not None:
                files.append({"model": name, "url": far.display, "size": far.size, "bytes_fetched": far.fetched,
                              "requests": far.requests, "bytes_in_cache": far.cached_bytes()})
    if not files:
        return None
    return {"note": "this run's transfers; they depend on the range cache's state before the run "
                    f"({remote.cache_root()}), like generated_at", "files": files,
            **remote.network_stats().as_dict()}


def _claim_coverage(audit: AuditSession) -> list[dict]:
    """Per claim (each reference's relation and refinements, then [catalog]): the audits that judged it."""
    records = [r.as_dict() for r in audit.records if r.family != "claims"]
    found = [c for ref in audit.plan.references for c in claim_coverage(ref, records)]
    catalog = catalog_coverage(audit.plan.catalog, audit.plan.target_name, records)
    found += [catalog] if catalog is not None else []
    return [c.as_dict() | {"label": c.label} for c in found]


def _relative_plan(plan: AuditPlan, root: Path) -> dict:
    data = plan.as_dict()
    if data["plan_file"]:
        data["plan_file"] = ev.display_path(data["plan_file"], root)
    return data


def _relative_source(data: dict, root: Path) -> dict:
    # a remote source is named by its URL, not by the cache folder that holds its files on this machine
    data["root"] = data["url"] if data.get("url") else ev.display_path(data["root"], root)
    return data


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Name the evidence file, like pytest-html names its report."""
    audit = _session(config)
    if audit is None:
        return
    for problem in audit.problems:
        terminalreporter.write_line(f"ERROR: {problem}", red=True)
    written = audit.evidence_path if audit.incomplete is None else ev.partial_path(audit.evidence_path)
    terminalreporter.write_sep("-", f"Evidence{'' if audit.incomplete is None else ' (incomplete)'}: {written}")


@pytest.hookimpl(optionalhook=True)
def pytest_html_report_title(report) -> None:
    """Title the HTML report."""
    report.title = "Provenance audit"


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_summary(prefix: list, summary: list, postfix: list, session: pytest.Session) -> None:
    """Put the answer on top of the report: verdict cards, one picture per reference, details by family, inputs."""
    audit = _session(session.config)
    if audit is None:
        return
    root = Path(session.config.rootpath)
    written = audit.evidence_path if audit.incomplete is None else ev.partial_path(audit.evidence_path)
    if audit.incomplete is not None:
        prefix.append(f"<p><strong>Incomplete run: {html.escape(audit.incomplete)}.</strong> This report and "
                      f"{html.escape(ev.display_path(written, root))} are not a verdict.</p>")
    try:
        records = ev.within([ev.to_jsonable(r) for r in audit.records], root, _renames(audit))
        bounds = ev.to_jsonable(audit.thresholds.as_dict()["bounds"])
        inputs = report.inputs_html(audit.inputs, audit.versions, ev.display_path(written, root))
        prefix.append(report.summary_html(audit.plan.as_dict(), records, ev.within(_claim_coverage(audit), root, _renames(audit)),
                                          bounds, extras={r.nodeid: r.extras for r in audit.records},
                                          allow_untested=audit.plan.allow_untested, inputs=inputs))
    except Exception as exc:  # the report is still written, with the reason the summary is missing
        audit.problems.append(f"the report's summary could not be built: {_describe(exc)}")
        prefix.append(f"<p><strong>The summary could not be built ({html.escape(_describe(exc))}); "
                      f"see {html.escape(ev.display_path(written, root))}.</strong></p>")
        _fail(session, pytest.ExitCode.INTERNAL_ERROR)


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_table_html(report, data: list) -> None:
    """Show a skipped audit's reason as a sentence, not as pytest's ``(path, line, message)`` tuple."""
    if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3 and data:
        path, line, message = report.longrepr
        data[0] = html.escape(f"{message.removeprefix('Skipped: ')}  ({Path(path).name}:{line})") + "\n"
