"""The real server (in a thread) with fake workers: staleness bookkeeping, rejections, counters."""

import threading

import pytest
import torch

from protocol.wire import codec
from protocol.wire.layout import Layout
from protocol.wire.messages import Pull, Push
from tests.helpers import FakeWorker, join_all, make_config, push_frames, running_server, served

LAYOUT = Layout.from_shapes([("w", (4, 5)), ("b", (5,))])
N = LAYOUT.total


def _cfg(workers=3, **kw):
    run = {"max_updates": 100000, "eval_every_s": 1000.0, **kw.pop("run", {})}
    server = {"stop_grace_s": 0.5, **kw.pop("server", {})}
    optimizer = kw.pop("optimizer", {"name": "sgd", "lr": 0.1})
    return make_config(workers=workers, run=run, optimizer=optimizer, server=server, **kw)


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_round_robin_workers_see_staleness_w_minus_1(workers, tmp_path):
    with running_server(_cfg(workers), run_dir=tmp_path, model=(LAYOUT, torch.zeros(N))) as (server, endpoint, _):
        ws = [FakeWorker(endpoint, r, LAYOUT) for r in range(workers)]
        join_all(ws)
        seen = []
        for _ in range(20):
            for w in ws:
                reply = w.push(torch.ones(N))
                assert reply.applied
                seen.append(reply.staleness)
        # the first round starts from version 0, so worker i's first push has staleness i
        assert seen[:workers] == list(range(workers))
        assert set(seen[workers:]) == {workers - 1}
        for w in ws:
            w.close()
    assert server.version == 20 * workers
    rows = (tmp_path / "updates.csv").read_text().splitlines()
    assert rows[0].startswith("version,worker,base_version,staleness,lr,bytes,applied,loss")
    assert len(rows) == 1 + 20 * workers


def test_pushes_are_applied_to_the_current_parameters():
    x0 = torch.randn(N)
    with running_server(_cfg(1), model=(LAYOUT, x0.clone())) as (server, endpoint, _):
        w = FakeWorker(endpoint, 0, LAYOUT)
        w.hello()
        g = torch.randn(N)
        reply = w.push(g)
        torch.testing.assert_close(reply.params, x0 - 0.1 * g)
        reply = w.push(g, base_version=0)  # stale by one: applied to the current x, not to x0
        assert reply.staleness == 1
        torch.testing.assert_close(reply.params, x0 - 0.2 * g)
        w.close()


def _state(server):
    return server.params.clone(), {k: v.clone() for k, v in server.model.opt.state().items()}, server.version


def _assert_unchanged(server, before):
    params, state, version = before
    assert torch.equal(server.params, params)
    assert server.version == version
    now = server.model.opt.state()
    assert set(now) == set(state) and all(torch.equal(now[k], state[k]) for k in state)


def test_bad_pushes_are_rejected_without_changing_state(tmp_path):
    cfg = _cfg(2, optimizer={"name": "amsgrad", "lr": 0.01})
    with running_server(cfg, run_dir=tmp_path, model=(LAYOUT, torch.randn(N))) as (server, endpoint, _):
        w0, w1 = FakeWorker(endpoint, 0, LAYOUT), FakeWorker(endpoint, 1, LAYOUT)
        join_all([w0, w1])
        assert w0.push(torch.randn(N)).applied  # optimizer state now exists
        before = _state(server)
        nan = torch.ones(N)
        nan[3] = float("nan")
        inf = torch.ones(N)
        inf[0] = float("inf")
        cases = {
            "nonfinite": lambda: w0.push(nan, advance=False),
            "nonfinite ": lambda: w0.push(inf, advance=False),
            "bad_shape": lambda: w0.push(torch.ones(N - 1), advance=False),
            "bad_seq": lambda: w0.push(torch.ones(N), seq=w0.seq + 3, advance=False),
            "future_version": lambda: w0.push(torch.ones(N), base_version=server.version + 5, advance=False),
            "unknown_rank": lambda: w0.push(torch.ones(N), rank=1, advance=False),  # rank 1 from w0's socket
            "bad_encoding": lambda: w0.push(torch.ones(N), kind="delta", advance=False),
            "bad_encoding ": lambda: w0.push(torch.ones(N, dtype=torch.int32), advance=False),
            "truncated": lambda: w0.send_frames(push_frames(0, w0.seq, 0, torch.ones(N))[:1]),
            "bad_header": lambda: w0.send_frames([b"\x93garbage"]),
            "oversized": lambda: w0.send_frames(push_frames(0, w0.seq, 0, torch.ones(N * 10))),
        }
        for expected, send in cases.items():
            reply = send()
            assert reply.TYPE == "reject", expected
            assert reply.code == expected.strip(), (expected, reply)
            _assert_unchanged(server, before)
        # a resend of the last push is answered again (the same outcome, the parameters of now), not applied
        again = w0.push(torch.ones(N), seq=w0.seq - 1, advance=False)
        assert again.TYPE == "reply" and again.applied and again.seq == w0.seq - 1 and again.version == 1
        _assert_unchanged(server, before)
        # a rejected push does not consume the sequence number: the next good push is applied
        reply = w0.push(torch.ones(N))
        assert reply.TYPE == "reply" and reply.applied
        w0.close()
        w1.close()
    c = server.report.counters
    assert c.pushes_received == c.pushes_applied + c.pushes_rejected
    assert c.pushes_applied == 2
    assert c.pushes_rejected + c.messages_rejected == len(cases) + 1  # + the resend, recorded as a duplicate
    assert c.reasons["duplicate"] == 1
    rows = (tmp_path / "updates.csv").read_text().splitlines()[1:]
    assert len(rows) == c.pushes_received


def test_reject_tells_the_worker_which_seq_to_send():
    with running_server(_cfg(1), model=(LAYOUT, torch.zeros(N))) as (server, endpoint, _):
        w = FakeWorker(endpoint, 0, LAYOUT)
        w.hello()
        for _ in range(3):
            w.push(torch.ones(N))
        reply = w.push(torch.ones(N), seq=10, advance=False)
        assert reply.code == "bad_seq" and reply.expected_seq == 3
        w.close()


def test_unknown_rank_and_mismatched_model_cannot_join():
    cfg = _cfg(2, server={"wait_for_workers": False})
    with running_server(cfg, model=served(LAYOUT, torch.zeros(N), run_id="run-a")) as (server, endpoint, _):
        assert FakeWorker(endpoint, 5, LAYOUT).hello(run_id="run-a").code == "unknown_rank"
        other = Layout.from_shapes([("w", (3, 3))])
        assert FakeWorker(endpoint, 1, other).hello(run_id="run-a").code == "bad_shape"  # the first Hello too
        buffers = [["bn.running_mean", [4], "float32"]]
        assert FakeWorker(endpoint, 1, LAYOUT).hello(run_id="run-a", buffer_signature=buffers).code == "bad_shape"
        assert FakeWorker(endpoint, 1, LAYOUT).hello(run_id="run-a", uplink="ef21").code == "bad_encoding"
        assert FakeWorker(endpoint, 1, LAYOUT).hello(run_id="run-b").code == "bad_run"
        ok = FakeWorker(endpoint, 0, LAYOUT)
        assert ok.hello(run_id="run-a").TYPE == "welcome"
        assert torch.equal(server.params, torch.zeros(N)) and server.version == 0  # no Hello defined anything


def test_pull_returns_current_parameters_and_push_from_a_stranger_is_refused():
    x0 = torch.randn(N)
    with running_server(_cfg(1), model=(LAYOUT, x0)) as (server, endpoint, _):
        w = FakeWorker(endpoint, 0, LAYOUT)
        w.hello()
        w.push(torch.ones(N))
        reply = w.request(Pull(rank=0))
        assert reply.TYPE == "reply" and reply.version == 1
        torch.testing.assert_close(reply.params, x0 - 0.1)
        stranger = FakeWorker(endpoint, 0, LAYOUT)  # never said hello
        assert stranger.push(torch.ones(N), advance=False).code == "unknown_rank"


def test_server_stops_at_max_updates_and_tells_every_worker(tmp_path):
    cfg = _cfg(2, run={"max_updates": 10})
    with running_server(cfg, run_dir=tmp_path, model=(LAYOUT, torch.zeros(N))) as (server, endpoint, result):
        ws = [FakeWorker(endpoint, r, LAYOUT) for r in range(2)]
        join_all(ws)
        types, stopped = [], set()
        while len(stopped) < 2:
            for w in ws:
                if w.rank not in stopped:
                    types.append(w.push(torch.ones(N)).TYPE)
                    if types[-1] == "stop":
                        stopped.add(w.rank)
        assert types == ["reply"] * 10 + ["stop"] * 2
    assert result["updates"] == 10 and result["stop_reason"] == "max_updates"
    assert (tmp_path / "snapshots" / "final.safetensors").exists()
    assert (tmp_path / "server_summary.json").exists()


def test_concurrent_workers_counters_add_up(tmp_path):
    workers, pushes = 4, 150
    with running_server(_cfg(workers), run_dir=tmp_path, model=(LAYOUT, torch.zeros(N))) as (server, endpoint, _):
        ws = [FakeWorker(endpoint, r, LAYOUT) for r in range(workers)]
        join_all(ws)
        errors = []

        def work(w):
            try:
                for i in range(pushes):
                    bad = i % 10 == 9
                    v = torch.full((N,), float("nan") if bad else 1.0)
                    reply = w.push(v, advance=not bad)
                    assert (reply.TYPE == "reject") == bad
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in ws]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        status = server.status()
    c = server.report.counters
    assert c.pushes_received == workers * pushes
    assert c.pushes_applied == workers * pushes * 9 // 10 == server.version
    assert c.pushes_received == c.pushes_applied + c.pushes_rejected
    assert status.updates == c.pushes_applied
    # all 4 workers each pushed -1 per coordinate per applied push at lr 0.1
    torch.testing.assert_close(server.params, torch.full((N,), -0.1 * server.version), rtol=1e-5, atol=0)


def test_wait_for_workers_starts_everyone_at_version_0():
    with running_server(_cfg(3), model=(LAYOUT, torch.zeros(N))) as (server, endpoint, _):
        ws = [FakeWorker(endpoint, r, LAYOUT) for r in range(3)]
        ws[0].send_hello()
        ws[1].send_hello()
        early = []
        while ws[0].chan.poll(0.3):
            early.append(ws[0].chan.recv(1)[1].TYPE)
        assert set(early) <= {"heartbeat"}  # kept waiting, not welcomed, until the last worker joins
        assert server.t_start is None
        ws[2].send_hello()
        assert all(w.recv_welcome().version == 0 for w in ws)


def test_reply_carries_bytes_accounting(tmp_path):
    with running_server(_cfg(1), run_dir=tmp_path, model=(LAYOUT, torch.zeros(N))) as (server, endpoint, _):
        w = FakeWorker(endpoint, 0, LAYOUT)
        w.hello()
        w.push(torch.ones(N))
        push_bytes = sum(
            len(f)
            for f in codec.encode(
                Push(
                    rank=0,
                    seq=0,
                    base_version=0,
                    kind="grad",
                    encoding="dense",
                    numel=N,
                    loss=1.0,
                    samples=1,
                    values=torch.ones(N),
                )
            )
        )
        assert server.report.counters.uplink_bytes == push_bytes
    row = (tmp_path / "updates.csv").read_text().splitlines()[1].split(",")
    assert int(row[5]) == push_bytes


def test_a_connection_that_has_not_joined_reads_no_parameters():
    cfg = _cfg(2, server={"wait_for_workers": False})
    with running_server(cfg, model=(LAYOUT, torch.randn(N))) as (server, endpoint, _):
        member = FakeWorker(endpoint, 0, LAYOUT)
        member.hello()
        stranger = FakeWorker(endpoint, 1, LAYOUT)
        for rank in (0, 1, 7):  # a joined rank, a free rank, a rank the run does not have
            answer = stranger.request(Pull(rank=rank))
            assert answer.TYPE == "reject" and answer.code == "unknown_rank", answer
        assert member.request(Pull(rank=0)).TYPE == "reply"
        stranger.close(), member.close()


def test_a_live_rank_cannot_be_taken_by_a_second_hello():
    with running_server(_cfg(1), model=(LAYOUT, torch.zeros(N))) as (server, endpoint, _):
        owner = FakeWorker(endpoint, 0, LAYOUT)
        owner.hello()
        assert owner.push(torch.ones(N)).applied
        thief = FakeWorker(endpoint, 0, LAYOUT)
        refused = thief.hello()
        assert refused.code == "rank_in_use" and "live connection" in refused.message
        assert thief.push(torch.ones(N), advance=False).code == "unknown_rank"
        assert owner.push(torch.ones(N)).applied  # the owner was not expelled
        assert server.version == 2
        thief.close(), owner.close()
