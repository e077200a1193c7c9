"""bench/sd_writes.py: the write budget is measured on the real buffer (a quick run)."""

from __future__ import annotations

from bench.sd_writes import measure


def test_a_connected_device_commits_nothing_and_an_offline_one_once_per_interval() -> None:
    online = measure(online=True, interval_s=60.0, commit_interval_s=60.0, hours=0.5)
    offline = measure(online=False, interval_s=60.0, commit_interval_s=60.0, hours=0.5)
    assert online["commits_per_hour"] == 0
    assert offline["commits_per_hour"] == 60
    assert offline["messages_per_hour"] >= 60
    assert offline["bytes_per_hour"] > offline["body_bytes_per_hour"] > online["commits_per_hour"]
