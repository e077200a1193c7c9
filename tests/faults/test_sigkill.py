"""SIGKILL the real agent at scripted random moments; audit devcloud's stored telemetry.

See :mod:`tests.support.killrun` for how the trials are driven and what is counted.
"""

from __future__ import annotations

from pathlib import Path

from agent.config import load_config
from tests.faults.conftest import Proxied
from tests.support.killrun import KillRun, sqlite_buffer_snapshot

#: How many kills the durable buffer's guarantee is proven over (issue #9: at least 200).
TRIALS = 200
#: Commit often, so kills find messages in the buffer (the default is once a minute).
BUFFER = 'buffer = "sqlite"\nbuffer_commit_interval_s = 0.25'


def test_200_sigkills_lose_nothing_acknowledged_to_the_durable_buffer(
    proxied: Proxied, tmp_path: Path, seed: int, pycache: Path
) -> None:
    run = KillRun(
        proxied.cloud,
        tmp_path / "kill",
        seed=seed,
        devices=4,
        telemetry_extra=BUFFER,
        snapshot=sqlite_buffer_snapshot,
        pycache=pycache,
        hub_proxies=tuple(proxied.hubs.values()),
        outage_s=(5.0, 2.0),  # 2 s of every 5 the hubs reset everything: a backlog builds
    )
    load_config(run.slots[0].config)  # fails fast (exit 78 in the agent) without the buffer
    try:
        run.run(TRIALS, budget_s=170)
        run.finish(drain_timeout_s=45)
    finally:
        run.stop()
    report = run.report()
    detail = f"seed {seed}: {report.summary()}\n{report.problems}\n{run.log_tails()}"
    print(report.summary())
    (tmp_path / "figures.txt").write_text(report.summary() + "\n")
    assert report.trials == TRIALS, detail
    assert report.problems == (), detail
    assert report.buffered_at_kills > 0, detail  # the buffer really held messages at kills
    assert report.lost == 0, f"lost {report.lost_examples}: {detail}"
    assert report.other_duplicates <= report.duplicate_bound, detail
