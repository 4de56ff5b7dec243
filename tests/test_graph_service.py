"""The graph service on ML-100K: partitions, shard actors on a real local Ray (token
authentication on), the client against the in-process sampler, histories against the
prepared samples, bad requests, and a shard actor killed and restarted."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request

import numpy as np
import pytest

from lorarec.core.errors import DataError
from lorarec.data.prepared import PreparedData
from lorarec.graph_service import partition, service
from lorarec.graph_service.client import GraphClient, Prefetcher
from lorarec.graph_service.sampler import NeighborSampler
from lorarec.graph_service.shard import GraphShard
from tests.conftest import build_once

pytestmark = pytest.mark.slow

SHARDS = (1, 2, 4)


@pytest.fixture(scope="module")
def data(ml100k_prepared):
    return PreparedData.open(ml100k_prepared, "next_item")


@pytest.fixture(scope="module")
def parts(data, tmp_path_factory):
    def build(root):
        seqs = partition.user_sequences(data)
        for n in SHARDS:
            partition.build(data, n, root / str(n), sequences=seqs)

    root = build_once(tmp_path_factory, "partitions", build)
    return {n: root / str(n) for n in SHARDS}


@pytest.fixture(scope="module")
def ray_services(parts):
    """A local Ray (as `lorarec train` starts it) with one service per shard count."""
    import ray

    service.connect(None, num_cpus=2)
    started = {
        n: service.start(p, service.ServiceOptions(), detached=False) for n, p in parts.items()
    }
    yield started
    ray.shutdown()


def all_samples(data):
    return [s for split in ("train", "valid", "test") for s in data.samples(split)]


def test_partition_layout_manifest_and_checksums(data, parts, tmp_path):
    indptr, indices = (np.asarray(a) for a in data.graph())
    n = len(indptr) - 1
    for k_shards, root in parts.items():
        m = partition.read_manifest(root)
        assert m["num_shards"] == k_shards and m["num_nodes"] == n
        owned = []
        for k in range(k_shards):
            sd = partition.ShardData.load(root, k).arrays
            nodes = np.asarray(sd["nodes"])
            assert (partition.shard_of(nodes, k_shards) == k).all()
            owned.append(nodes)
            # each owned node's neighbour list is the full graph's, in the same order
            for row in range(0, len(nodes), 97):
                v = nodes[row]
                got = sd["indices"][sd["indptr"][row] : sd["indptr"][row + 1]]
                np.testing.assert_array_equal(got, indices[indptr[v] : indptr[v + 1]])
            np.testing.assert_array_equal(sd["nbr_degree"], np.diff(indptr)[sd["indices"]])
        assert np.array_equal(np.sort(np.concatenate(owned)), np.arange(n))  # a partition
        assert sum(s["nodes"] for s in m["shards"]) == n
    # a changed file fails its checksum when a shard loads it (a copy: the partition is shared)
    import shutil

    copy = tmp_path / "partition"
    shutil.copytree(parts[2], copy)
    victim = copy / "shard-0001" / "indices.npy"
    arr = np.load(victim)
    arr[0] += 1
    np.save(victim, arr)
    with pytest.raises(DataError, match="checksum mismatch"):
        partition.ShardData.load(copy, 1)
    with pytest.raises(DataError, match="no shard 7"):
        partition.ShardData.load(parts[2], 7)


def test_shard_hash_is_stable():
    # the owner of a node must not change between versions or machines
    assert partition.shard_of(np.arange(8), 4).tolist() == [3, 1, 2, 1, 2, 2, 0, 3]


def test_histories_equal_every_prepared_sample(data, parts):
    """All ~100k samples of all splits: the shard's history before the sample's interaction
    equals the sample's own history."""
    shards = [GraphShard(parts[2], k) for k in range(2)]
    samples = all_samples(data)
    users = np.array([s["user"] for s in samples])
    owner = partition.shard_of(users, 2)
    length = data.manifest["options"]["history_long"]
    checked = 0
    for k, shard in enumerate(shards):
        rows = np.flatnonzero(owner == k)
        lengths, items = shard.histories(
            users[rows],
            np.array([samples[i]["timestamp"] for i in rows]),
            np.array([samples[i]["target"] for i in rows]),
            length,
        )
        for i, h in zip(rows, np.split(items, np.cumsum(lengths)[:-1])):
            assert h.tolist() == samples[i]["history"], samples[i]["key"]
            checked += 1
    assert checked == len(samples) > 90_000


def test_bad_requests_raise_clear_errors_and_the_shard_keeps_serving(parts):
    shard = GraphShard(parts[2], 0)
    mine = np.asarray(shard.nodes[:3])
    other = int(np.flatnonzero(partition.shard_of(np.arange(50), 2) == 1)[0])
    with pytest.raises(ValueError, match=rf"unknown node id\(s\) \[{other}\]"):
        shard.sample_hop(np.array([other]), 5, 0, 0)
    with pytest.raises(ValueError, match="fanouts"):
        shard.sample_hop(mine, 0, 0, 0)
    with pytest.raises(ValueError, match="seed must be"):
        shard.sample_hop(mine, 5, -1, 0)
    with pytest.raises(ValueError, match="integer ids"):
        shard.sample_hop(np.array([0.5]), 5, 0, 0)
    with pytest.raises(ValueError, match="no interaction with item"):
        shard.histories(shard.users[:1], np.array([1]), np.array([2]), 5)
    with pytest.raises(ValueError, match="cuts must be"):
        shard.sample_hop(mine, 5, 0, 0, np.zeros((1, 4), np.int64))
    count, nbr, deg, node_deg, hidden_count, hidden = shard.sample_hop(mine, 5, 0, 0)
    assert len(nbr) == min(5, node_deg[0]) + min(5, node_deg[1]) + min(5, node_deg[2])
    assert count.tolist() == np.minimum(node_deg, 5).tolist() and hidden_count.sum() == 0
    st = shard.stats()
    assert st["errors"] == {"sample_hop": 5, "histories": 1} and st["requests"]["sample_hop"] == 6


def test_service_equals_inprocess_sampler(data, ray_services):
    """N = 1, 2, 4 shard actors return exactly what the in-process sampler returns."""
    indptr, indices = data.graph()
    ref = NeighborSampler(indptr, indices)
    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, ref.num_nodes, b), f) for b in (1, 32, 256) for f in ([10, 5], [3])]
    cases.append((np.array([5, 5, 1000, 5]), [-1]))  # duplicates and all neighbours
    for n, svc in ray_services.items():
        client = GraphClient(svc.namespace)
        assert client.num_shards == n
        for i, (seeds, fanouts) in enumerate(cases):
            a, b = ref.sample(seeds, fanouts, seed=i), client.sample(seeds, fanouts, seed=i)
            np.testing.assert_array_equal(a.nodes, b.nodes)
            np.testing.assert_array_equal(a.edge_index, b.edge_index)
            np.testing.assert_array_equal(a.degrees, b.degrees)
            assert a.num_seeds == b.num_seeds
            # true neighbours, within the fanout per node of the first hop
            g = b.nodes[b.edge_index]
            for u, v in g.T[:: max(1, g.shape[1] // 200)].tolist():
                assert v in indices[indptr[u] : indptr[u + 1]]
        piped = list(client.sample_many(((c[0], i) for i, c in enumerate(cases)), [10, 5], 3))
        for i, (seeds, _) in enumerate(cases):
            a = ref.sample(seeds, [10, 5], seed=i)
            np.testing.assert_array_equal(a.nodes, piped[i].nodes)
            np.testing.assert_array_equal(a.edge_index, piped[i].edge_index)
        again = client.sample(cases[2][0], [10, 5], seed=2)
        np.testing.assert_array_equal(again.nodes, client.sample(cases[2][0], [10, 5], 2).nodes)
        feats = client.features(np.arange(0, ref.num_nodes, 11))
        np.testing.assert_array_equal(feats[:, 0], ref.degrees(np.arange(0, ref.num_nodes, 11)))
        assert (feats[:, 1] == (np.arange(0, ref.num_nodes, 11) < data.num_users)).all()


def test_served_histories_equal_prepared_data_for_every_user(data, ray_services):
    client = GraphClient(ray_services[4].namespace)
    test = data.samples("test")
    assert len({s["user"] for s in test}) == data.num_users  # every user has a test sample
    served = client.histories(
        np.array([s["user"] for s in test]),
        50,
        np.array([s["timestamp"] for s in test]),
        np.array([s["target"] for s in test]),
    )
    for s, h in zip(test, served):
        assert h.tolist() == s["history"]
    # without a time, the user's whole sequence: the test sample's history and its target
    latest = client.histories(np.array([s["user"] for s in test]), 50)
    for s, h in zip(test, latest):
        assert h.tolist() == (s["history"] + [s["target"]])[-50:]


def test_bad_request_comes_back_as_an_error_and_the_actor_keeps_serving(ray_services):
    client = GraphClient(ray_services[2].namespace)
    with pytest.raises(ValueError, match=r"node ids must be in \[0, 2625\)"):
        client.sample(np.array([99_999]), [5], seed=0)
    with pytest.raises(ValueError, match="unknown node id"):  # checked by the actor itself
        client._call({0: ("sample_hop", (np.array([10**7]), 5, 0, 0))})
    with pytest.raises(ValueError, match="fanouts"):
        client.sample(np.array([1]), [0], seed=0)
    assert client.sample(np.array([1, 2]), [5], seed=0).num_seeds == 2
    assert service.restarts(ray_services[2].namespace) == {"shard-0000": 0, "shard-0001": 0}
    assert client.stats()[0]["errors"]["sample_hop"] >= 1


def test_cluster_refuses_a_client_with_another_token(ray_services, tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(tmp_path), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
    code = f"import ray; ray.init(address={service.gcs_address()!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode != 0 and "Failed to connect to Ray cluster" in proc.stderr


def test_killed_shard_restarts_reloads_and_the_client_retries(data, ray_services):
    ns = ray_services[2].namespace
    client = GraphClient(ns)
    seeds = np.arange(0, 2600, 13)
    before = client.sample(seeds, [10, 5], seed=9)
    pid = client.stats()[1]["pid"]
    os.kill(pid, signal.SIGKILL)
    after = client.sample(seeds, [10, 5], seed=9)  # retried while Ray restarts the actor
    np.testing.assert_array_equal(before.nodes, after.nodes)
    np.testing.assert_array_equal(before.edge_index, after.edge_index)
    assert client.retried >= 1
    assert client.stats()[1]["pid"] != pid
    assert service.restarts(ns)["shard-0001"] == 1
    # the new process serves /metrics on a new endpoint, which reports the restart
    endpoints = service.metrics_endpoints(ns)
    assert [e.labels["shard"] for e in endpoints] == ["0", "1"]
    assert endpoints[1].url == client.stats()[1]["metrics_url"]
    text = urllib.request.urlopen(endpoints[1].url, timeout=10).read().decode()
    assert re.search(r'^lorarec_graph_shard_restarts\{[^}]*shard="1"\} 1\.0$', text, re.M)
    assert re.search(
        r'^lorarec_graph_requests_total\{[^}]*kind="sample_hop"[^}]*\} [1-9]', text, re.M
    )


def test_prefetcher_keeps_order_and_raises_where_the_error_is():
    seen = []

    def slow_square(x):
        seen.append(x)
        time.sleep(0.01)
        if x == 7:
            raise KeyError("seven")
        return x * x

    out = []
    with pytest.raises(KeyError, match="seven"):
        for v in Prefetcher(range(10), slow_square, depth=3):
            out.append(v)
    assert out == [x * x for x in range(7)]
    assert max(seen) <= 7  # nothing computed past the failing item
    assert list(Prefetcher(iter([]), slow_square, depth=1)) == []
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(range(3), slow_square, depth=0)


def test_graph_cli_serve_status_stop(ml100k_prepared, parts, tmp_path):
    """`lorarec graph serve` starts a local Ray and detached actors and returns; `status`
    reports them from another process; `stop` ends both."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["LORAREC_HOME"] = str(tmp_path / "home")
    lorarec = [sys.executable, "-m", "lorarec.launch.cli"]

    def run(*args):
        return subprocess.run(
            [*lorarec, *args], env=env, capture_output=True, text=True, timeout=300
        )

    served = run(
        "graph", "serve", str(ml100k_prepared), "--shards", "2", "--partitions", str(parts[2])
    )
    try:
        assert served.returncode == 0, served.stderr[-2000:]
        assert "started a local Ray" in served.stdout and "2 shards" in served.stdout
        st = run("graph", "status", "--json")
        assert st.returncode == 0, st.stderr[-2000:]
        rows = json.loads(st.stdout)
        assert [r["shard"] for r in rows] == [0, 1]
        assert sum(r["nodes"] for r in rows) == 2625 and all(r["restarts"] == 0 for r in rows)
        token = tmp_path / "home/ray/auth_token"
        assert token.is_file() and (token.stat().st_mode & 0o077) == 0  # private
    finally:
        stopped = run("graph", "stop")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert "2 shard actors" in stopped.stdout
    gone = run("graph", "status")
    assert gone.returncode == 2 and "no local one" in gone.stderr
    bad = run("graph", "serve", str(tmp_path), "--shards", "2")
    assert bad.returncode == 2 and "not a prepared data directory" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def graph_shard_pids(root: int) -> list[int]:
    """Processes of shard actors descended from ``root`` (the run's own Ray)."""
    children: dict[int, list[int]] = {}
    titles: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            titles[int(entry)] = open(f"/proc/{entry}/cmdline").read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        for c in children.get(pid, []):
            todo.append(c)
            if titles.get(c, "").startswith("ray::GraphShard"):
                found.append(c)
    return sorted(found)


def test_service_neighbourhoods_are_leak_free_and_equal_the_inprocess_sampler(data, ray_services):
    """Every 8th training sample's neighbourhood (around its user and target; about 12,000,
    every user's) from 1 and 4 shard actors: the cut hides the same edges as in process, so no
    edge of the user at or after the sample's interaction is served, and the subgraphs equal the
    in-process ones. (Every training sample against the in-process rule: test_leakfree.py.)"""
    from tests.test_leakfree import components, draw, edge_times, leaks

    ref = NeighborSampler(*data.graph(), data.graph_times())
    train = data.samples("train")[::8]
    lookup = edge_times(data)
    expected = draw(ref, train, data.num_users)
    for n in (1, 4):
        client = GraphClient(ray_services[n].namespace)
        served = draw(client, train, data.num_users)
        assert sum(len(c) for _, c in served) == len(train)
        assert leaks(served, lookup, data.num_users) == 0
        for (a, _), (b, _) in zip(expected, served):
            for name in ("nodes", "edge_index", "degrees", "sampled", "offsets", "seeds"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        # per-sample components through sample_many equal the batch's
        parts = list(client.sample_many(((s, i) for i, s in enumerate([[1, 2], [3]])), [5, 2]))
        assert [p.num_seeds for p in parts] == [2, 1]
    assert components(expected[:1])[0].num_seeds == 2
