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
from hypothesis import settings

# `make mutation` (mutation/run.py) sets HYPOTHESIS_PROFILE=mutation: each property test
# runs a fixed, smaller set of examples with no deadline and no example database, so a
# mutant's verdict depends neither on chance, on the slower mutated code's timing, nor
# on what an earlier mutant's run left behind.
settings.register_profile(
    "mutation", max_examples=20, deadline=None, derandomize=True, database=None
)
MUTATION_RUN = os.environ.get("HYPOTHESIS_PROFILE") == "mutation"
if MUTATION_RUN:
    settings.load_profile("mutation")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In a mutation run, tests with their own ``@settings`` get the profile's limits too."""
    if not MUTATION_RUN:
        return
    profile = settings.get_profile("mutation")
    for item in items:
        test = getattr(item, "obj", None)
        own = getattr(test, "_hypothesis_internal_use_settings", None)
        if own is not None:
            test._hypothesis_internal_use_settings = settings(  # type: ignore[union-attr]
                own, max_examples=min(own.max_examples, profile.max_examples), deadline=None
            )


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
