"""Suite-wide rules.

Under CI (``CI`` set in the environment) nothing may be skipped silently: a skip
there means a missing install step, so it is turned into a failure that keeps the
skip's reason. Tests that need hardware this machine cannot have are not generated
at all (see ``tests/hal/test_contract.py``), so they never reach this hook.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must run every test: {reason}"
