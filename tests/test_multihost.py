"""A run across two hosts: two network namespaces joined by a veth pair, with addresses that exist only inside
them, and torchrun --nnodes 2 placing the roles (python -m launch.node; docs/design.md, Runs across hosts).

Node 0 (namespace A) runs the head (server, evaluator, run folder) and two workers; node 1 (namespace B) runs
two more. The server binds A's veth address, so the launcher's default turns CURVE on; the workers' public
keys and the endpoint travel through torchrun's own store. The run folder must be complete and its accuracy
match the same config run on one host. With server.shards=2 both shards run on the head and every worker
connects to both (docs/design.md, Runs across hosts). Needs root (ip netns); skipped with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from protocol.config.loader import load_experiment, resolved_yaml
from protocol.runfolder.snapshot import read_snapshot

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 240
# server.transport=zmq: the namespaces share this host's /dev/shm, so "auto" would hand the workers in B the
# parameters (and their pushes) through shared memory, and the veth pair would carry no tensors
ARGS = ["configs/tiny.yaml", "workers=4", "run.max_updates=600", "server.transport=zmq", "--quiet"]


def _sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_hosts():
    """Namespaces A and B, 10.231.N.1 and .2 on a veth pair between them; removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (ip): not available here")
    tag = f"{os.getpid() % 100000}"
    a, b, subnet = f"taupsA{tag}", f"taupsB{tag}", f"10.231.{os.getpid() % 250}"
    made = _sh("ip", "netns", "add", a)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        steps = [
            ("ip", "netns", "add", b),
            ("ip", "link", "add", f"tva{tag}", "type", "veth", "peer", "name", f"tvb{tag}"),
            ("ip", "link", "set", f"tva{tag}", "netns", a),
            ("ip", "link", "set", f"tvb{tag}", "netns", b),
            ("ip", "-n", a, "addr", "add", f"{subnet}.1/24", "dev", f"tva{tag}"),
            ("ip", "-n", b, "addr", "add", f"{subnet}.2/24", "dev", f"tvb{tag}"),
        ]
        for ns, dev in ((a, f"tva{tag}"), (b, f"tvb{tag}")):
            steps += [("ip", "-n", ns, "link", "set", "lo", "up"), ("ip", "-n", ns, "link", "set", dev, "up")]
        for step in steps:
            done = _sh(*step)
            assert done.returncode == 0, f"{' '.join(step)}: {done.stderr}"
        yield a, b, f"{subnet}.1"
    finally:
        for ns in (a, b):
            _sh("ip", "netns", "del", ns)  # takes its end of the veth pair with it


def _node(
    ns: str, master: str, node_rank: int, nproc: int, run_dir: Path, log: Path, args: list, module: str = "launch.node"
) -> subprocess.Popen:
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
           "--node-rank", str(node_rank), "--nproc-per-node", str(nproc), "--master-addr", master,
           "--master-port", "29431", "-m", module, *args, "--run-dir", str(run_dir)]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _two_nodes(hosts: tuple, nprocs: tuple[int, int], run: Path, logs: Path, args: list, module: str) -> None:
    """torchrun on both hosts (node 0 on A, node 1 on B), each `nprocs` slots of `module`; both must exit 0."""
    a, b, master = hosts
    nodes = [
        _node(ns, master, i, n, run, logs / f"node{i}.log", args, module)
        for i, (ns, n) in enumerate(zip((a, b), nprocs))
    ]
    try:
        codes = [p.wait(timeout=TIMEOUT_S) for p in nodes]
    finally:
        for p in nodes:
            _stop(p)
    tails = "\n".join((logs / f"node{i}.log").read_text()[-3000:] for i in range(2))
    assert codes == [0, 0], tails


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.parametrize("shards", [1, 2])
def test_torchrun_places_a_run_across_two_network_namespaces(two_hosts, tmp_path, shards):
    a, b, master = two_hosts
    run, args = tmp_path / "run", [*ARGS[:-1], f"server.shards={shards}", "--quiet"]  # overrides before flags
    _two_nodes(two_hosts, (3, 2), run, tmp_path, args, "launch.node")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["workers"] == 4, summary
    assert summary["auth"] == "curve" and summary["auth_rejected"] == 0  # beyond loopback: CURVE by default
    for rank in range(4):  # every worker's report reached the head's run folder
        report = json.loads((run / f"worker-{rank}.json").read_text())
        assert report["pushes"] > 0 and report["stop_reason"] == "max_updates", report
        assert report["params_from_shm"] == 0, report  # every parameter came over the network
    assert (run / "snapshots" / "final.safetensors").exists() and (run / "plots").is_dir()
    _check_servers(run, summary, master, shards)
    one_host = subprocess.run([sys.executable, "-m", "launch", *args, "--run-dir", str(tmp_path / "one")],
                              cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)  # fmt: skip
    assert one_host.returncode == 0, one_host.stderr
    alone = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert abs(summary["final_test_acc"] - alone["final_test_acc"]) <= 0.05, (summary["final_test_acc"], alone)


def _check_servers(run: Path, summary: dict, master: str, shards: int) -> None:
    """One server on A's address, or every shard there with its own folder; the updates the run counts."""
    if shards == 1:
        assert summary["updates"] == 600, summary
        assert json.loads((run / "server.json").read_text())["endpoint"].startswith(f"tcp://{master}:")
        return
    # the first shard to reach 600 ends the run; the other ends within the pushes in flight (one per worker)
    versions = [s["updates"] for s in summary["shards"]]
    assert len(versions) == shards and max(versions) == 600 and summary["updates"] == min(versions) >= 596, summary
    assert summary["shard_spread"] == max(versions) - min(versions)
    for s in range(shards):
        assert json.loads((run / f"server-{s}.json").read_text())["endpoint"].startswith(f"tcp://{master}:")
        assert (run / f"shard-{s}" / "snapshots" / "final.safetensors").exists()
        assert (run / f"shard-{s}" / "server_summary.json").exists()


def test_torchrun_runs_the_sync_baseline_across_two_network_namespaces(two_hosts, tmp_path):
    """The same placement for the synchronous baseline: torchrun's own group (gloo over the veth pair), two
    ranks per host (gloo on the veth pair, not on the 127.0.x.x the host name resolves to); every rank ends at
    run.max_updates with the final model bitwise that of the same run on one host."""
    a, b, master = two_hosts
    cfg = load_experiment("configs/tiny.yaml", ["mode=sync", "workers=4", "run.max_updates=200"])
    config = tmp_path / "sync.yaml"
    config.write_text(resolved_yaml(cfg))
    run, args = tmp_path / "run", ["--config", str(config)]
    _two_nodes(two_hosts, (2, 2), run, tmp_path, args, "sync")
    for rank in range(4):
        report = json.loads((run / f"worker-{rank}.json").read_text())
        assert report["pushes"] == 200 and report["stop_reason"] == "max_updates", report
    alone_cmd = [sys.executable, "-m", "launch", str(config), "--quiet", "--run-dir", str(tmp_path / "one")]
    one_host = subprocess.run(alone_cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert one_host.returncode == 0, one_host.stderr
    across, alone = (read_snapshot(d / "snapshots" / "final.safetensors") for d in (run, tmp_path / "one"))
    assert across.meta["version"] == alone.meta["version"] == 200
    assert torch.equal(across.params, alone.params)
    scored = subprocess.run([sys.executable, "-m", "launch.evaluate", "--config", str(config), "--run-dir", str(run)],
                            cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)  # fmt: skip
    assert scored.returncode == 0, scored.stderr  # rank 0's run folder scored afterwards, as docs/design.md says
    final = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert (
        final["final"]
        and final["test_acc"] == json.loads((tmp_path / "one" / "summary.json").read_text())["final_test_acc"]
    )
