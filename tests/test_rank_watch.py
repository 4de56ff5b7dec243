"""lorarec train's watch over its ranks (launch/train.py: RankWatch): a rank whose heartbeat stops
for the timeout names its host as lost, a rank that failed on another host ends the job, and a
rank that keeps beating does not, whatever the hosts' clocks say. State files as the ranks
write them (trainer/__main__.py: RankStatus)."""

from __future__ import annotations

import json

from lorarec.core.io import write_json_atomic
from lorarec.launch.train import RankWatch, failed_ranks


def state(run, rank, beat, state="running", node=None, addr=None, detail=""):
    write_json_atomic(
        run / "ranks" / f"rank-{rank}.json",
        {
            "rank": rank,
            "pid": 999999,
            "host": "elsewhere",
            "node": rank if node is None else node,
            "addr": addr,
            "state": state,
            "detail": detail,
            "beat": beat,
        },
    )


def test_a_rank_without_heartbeat_names_its_host_as_lost(tmp_path):
    watch = RankWatch(tmp_path, timeout=10, hosts=["localhost", "no-such-host.invalid"])
    state(tmp_path, 0, 1, addr="127.0.0.1")
    state(tmp_path, 1, 1, addr="10.9.9.9")
    assert watch.check(now=0) is None
    state(tmp_path, 0, 2, addr="127.0.0.1")  # rank 0 beats on, rank 1 stops
    assert watch.check(now=6) is None
    state(tmp_path, 0, 3, addr="127.0.0.1")
    assert watch.check(now=9.9) is None  # 9.9 s since rank 1's last change: not yet
    state(tmp_path, 0, 4, addr="127.0.0.1")
    reason = watch.check(now=10.1)
    assert reason == "host node 1 (10.9.9.9) lost (rank 1: no heartbeat for 10 s)"
    assert watch.lost == {1}
    watch.end_job(reason)
    # the stop file the ranks obey carries the reason into the error line
    assert json.loads((tmp_path / "ranks" / "stop").read_text()) == {"reason": reason}
    assert failed_ranks(tmp_path, 1).startswith(reason)


def test_a_host_is_named_by_the_hostfile_name_that_resolves_to_its_address(tmp_path):
    watch = RankWatch(tmp_path, timeout=1, hosts=["localhost"])
    state(tmp_path, 0, 5, addr="127.0.0.1")
    watch.check(now=0)
    assert watch.check(now=2) == "host localhost lost (rank 0: no heartbeat for 1 s)"


def test_a_failed_rank_on_another_host_ends_the_job_a_beating_one_does_not(tmp_path):
    watch = RankWatch(tmp_path, timeout=5, hosts=["localhost", "127.0.0.2"])
    state(tmp_path, 0, 1, addr="127.0.0.1")
    state(tmp_path, 1, 1, state="failed", addr="127.0.0.2", detail="ValueError: bad batch")
    assert watch.check(now=0) == "rank 1 failed on 127.0.0.2 (ValueError: bad batch)"
    # on one host (no hostfile) deepspeed's launcher ends the others: no watch verdict
    single = RankWatch(tmp_path, timeout=5)
    assert single.check(now=0) is None
    for t in range(1, 100):  # beating ranks are never lost, however long the run
        state(tmp_path, 0, 1 + t, addr="127.0.0.1")
        state(tmp_path, 1, 1 + t, addr="127.0.0.2")
        assert single.check(now=t * 4.0) is None
