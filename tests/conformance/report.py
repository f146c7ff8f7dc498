"""Expected failures and per-suite counts for the ONNX conformance run (a pytest plugin,
registered by the root conftest.py)."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest
from onnx.backend.test.runner import BackendIsNotSupposedToImplementIt

EXPECTED = Path(__file__).with_name("expected_failures.txt")
SUITES = {
    "OnnxBackendNodeModelTest": "node",
    "OnnxBackendSimpleModelTest": "simple",
    "OnnxBackendPyTorchConvertedModelTest": "pytorch-converted",
    "OnnxBackendPyTorchOperatorModelTest": "pytorch-operator",
    "OnnxBackendRealModelTest": "real",
}
UPDATE = os.environ.get("QIR_UPDATE_EXPECTED") == "1"


def _expected() -> set[str]:
    if not EXPECTED.exists():
        return set()
    lines = (line.split("#")[0].strip() for line in EXPECTED.read_text().splitlines())
    return {line for line in lines if line}


def _reasons() -> dict[str, str]:
    """name → the reason written after '#' on its line."""
    if not EXPECTED.exists():
        return {}
    pairs = (line.partition("#") for line in EXPECTED.read_text().splitlines())
    return {name.strip(): reason.strip() for name, _, reason in pairs if name.strip()}


def _suite(item) -> str:
    return SUITES.get(item.cls.__name__ if item.cls else "", "other")


def _deselected(item) -> bool:
    """CUDA variants (qir's reference backend is a CPU backend) and the light models, which
    tests/models/test_light_models.py checks with stricter comparisons."""
    return item.name.endswith("_cuda") or _suite(item) == "real"


def pytest_collection_modifyitems(config, items):
    dropped = [item for item in items if _deselected(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not _deselected(item)]
    if UPDATE:
        return
    expected = _expected()
    for item in items:
        if item.name in expected:
            item.add_marker(pytest.mark.xfail(reason="listed in expected_failures.txt", strict=True))


_outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
_failed: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when == "call" and call.excinfo is not None and call.excinfo.errisinstance(BackendIsNotSupposedToImplementIt):
        # onnx's runner counts a declined case as passed; it is not: report it as skipped.
        report.outcome = "skipped"
        report.longrepr = (str(item.path), 0, "declined (BackendIsNotSupposedToImplementIt)")
    suite = _suite(item)
    if suite != "other" and (report.when == "call" or (report.when == "setup" and report.outcome != "passed")):
        report.qir_suite = suite


def pytest_report_teststatus(report, config):
    suite = getattr(report, "qir_suite", None)
    if suite is None:
        return None
    if hasattr(report, "wasxfail"):
        kind = "xpassed" if report.passed else "failed"
    else:
        kind = report.outcome
    _outcomes[suite][kind] += 1
    if kind == "failed" or (UPDATE and report.failed):
        _failed.append(report.nodeid.rsplit("::", 1)[-1])
    return None


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _outcomes:
        return
    tr = terminalreporter
    tr.section("ONNX conformance (passed / total; failures incl. expected ones)")
    for suite in ("node", "simple", "pytorch-converted", "pytorch-operator"):
        c = _outcomes.get(suite)
        if not c:
            continue
        total = sum(c.values())
        tr.write_line(f"{suite:18s} passed {c['passed']:5d} / {total:5d}   failed {c['failed']:5d}   "
                      f"skipped {c['skipped']:4d}" + (f"   newly passing {c['xpassed']}" if c["xpassed"] else ""))
    if UPDATE and not hasattr(config, "workerinput"):
        reasons = _reasons()
        EXPECTED.write_text("# ONNX backend cases qir does not pass yet, with the reason "
                            "(make conformance-update rewrites this, keeping reasons)\n"
                            + "".join(f"{name:55s} # {reasons.get(name, 'reason not written yet')}\n"
                                      for name in sorted(set(_failed))))
        tr.write_line(f"wrote {len(set(_failed))} names to {EXPECTED}")
