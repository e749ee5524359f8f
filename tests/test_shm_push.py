"""Dense pushes through a per-rank shared-memory push slot (docs/design.md, Shared-memory pushes): the slot's
file and what opening it checks, the server staging a push from its rank's slot, refusing claims of a slot it
never offered or that holds another push, never reading the slot for a resent push it already answered, and
the worker writing its slot only while no push of its was refused since its last Reply."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from protocol.config.schema import ExperimentConfig, ServerConfig
from protocol.runfolder.records import WorkerReport
from protocol.wire import shm
from protocol.wire.messages import Push, Reject, Reply
from worker.shm_params import ShmParams

pytestmark = pytest.mark.skipif(not shm.supported(), reason="shared-memory pushes need x86-64 and /dev/shm")
N = 1000


@pytest.fixture(autouse=True)
def no_leftovers():
    before = set(os.listdir(shm.SHM_DIR))
    yield
    # other runs may be going on, and in-process servers of other tests (run id "norun") in other processes
    ours = (shm.prefix("slot"), f"{shm.prefix('norun')}{os.getpid()}-")
    leaked = {n for n in set(os.listdir(shm.SHM_DIR)) - before if n.startswith(ours)}
    assert not leaked, f"segments left in /dev/shm: {leaked}"


def _open(slot: shm.PushSlot, rank: int | None = None) -> shm.PushSlotWriter:
    rank = slot.rank if rank is None else rank
    return shm.PushSlotWriter(shm.Advert.from_wire(slot.advert().to_wire(), slot.rank), rank, slot.numel)


def test_a_push_slot_is_private_named_for_its_rank_and_holds_what_the_worker_wrote():
    slot = shm.PushSlot("slot", 3, N)
    assert stat.S_IMODE(os.stat(slot.path).st_mode) == 0o600 and slot.name.endswith("-push3")
    assert slot.values(0) is None  # nothing written yet
    w = _open(slot)
    w.write(5, np.arange(N, dtype=np.float32))
    got = slot.values(5)
    assert got is not None and np.array_equal(got, np.arange(N, dtype=np.float32))
    assert slot.values(4) is None and slot.values(6) is None  # the slot holds push 5, no other
    w.close()
    slot.close()
    assert not slot.path.exists()


def test_a_worker_refuses_a_slot_that_is_not_the_advertised_one_or_not_its_rank():
    slot, other = shm.PushSlot("slot", 0, N), shm.PushSlot("slot", 1, N)
    wire = slot.advert().to_wire()
    with pytest.raises(shm.SegmentError, match="not the push slot"):
        shm.PushSlotWriter(shm.Advert.from_wire({**wire, "nonce": other.nonce}, 0), 0, N)
    with pytest.raises(shm.SegmentError, match="malformed"):  # rank 1's slot offered to rank 0
        shm.Advert.from_wire(other.advert().to_wire(), 0)
    with pytest.raises(shm.SegmentError, match="malformed"):  # a parameter segment's name is no push slot
        shm.Advert.from_wire({**wire, "name": wire["name"].removesuffix("-push0")}, 0)
    with pytest.raises(shm.SegmentError, match="another host"):
        shm.PushSlotWriter(shm.Advert.from_wire(wire, 0), 0, N + 1)
    for s in (slot, other):
        s.close()


def test_remove_segments_removes_push_slots_too():
    slot = shm.PushSlot("slot", 0, N)
    slot._unlink.detach()  # as if the server was killed: nobody unlinks it
    assert shm.remove_segments("slot") == [slot.name] and not slot.path.exists()
    slot._m.close()


# -- the server ------------------------------------------------------------------------------------------------


def _serve(transport: str, script) -> tuple[object, torch.Tensor]:
    """An in-process server (one worker, rank 0) and a FakeWorker joined to it; script(w, welcome) runs the
    exchange. Returns what the script returned and the server's parameters at the end."""
    from launch.inproc import FakeWorker, make_config, running_server
    from protocol.wire.layout import Layout

    cfg = make_config(workers=1, server={"transport": transport, "stop_grace_s": 0.5}, run={"max_updates": 100})
    layout = Layout.from_shapes([("w", (N,))])
    with running_server(cfg, model=(layout, torch.zeros(N))) as (server, endpoint, _):
        w = FakeWorker(endpoint, 0, layout)
        welcome = w.hello()
        got = script(w, welcome)
        final = server.params.clone()
        w.close()
    return got, final


def _claim(w, seq: int | None = None, advance: bool = True, **more):
    """A push of N values that says they are in the slot (FakeWorker.push always sends a values frame)."""
    fields = dict(rank=0, seq=w.seq if seq is None else seq, base_version=w.version, kind="grad", encoding="dense")
    fields.update(numel=N, loss=1.0, samples=1, values_in_shm=True, **more)
    reply = w.request(Push(**fields))
    if advance and isinstance(reply, Reply):
        w.seq, w.version = w.seq + 1, reply.version
    return reply


def _grads(k: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(N, generator=gen) for _ in range(k)]


def test_pushes_through_the_slot_step_the_model_bitwise_as_pushes_over_zeromq():
    grads = _grads(3)

    def via_slot(w, welcome):
        writer = _open_advertised(welcome.settings)
        replies = [_claim(w) if _write(writer, w.seq, g) else None for g in grads]
        writer.close()
        return replies

    replies, shm_final = _serve("auto", via_slot)
    assert all(isinstance(r, Reply) and r.applied for r in replies), replies
    _, zmq_final = _serve("zmq", lambda w, welcome: [w.push(g) for g in grads])
    assert torch.equal(shm_final, zmq_final) and not torch.equal(shm_final, torch.zeros(N))


def _open_advertised(settings: dict) -> shm.PushSlotWriter:
    return shm.PushSlotWriter(shm.Advert.from_wire(settings["shm_push"], 0), 0, N)


def _write(writer: shm.PushSlotWriter, seq: int, values: torch.Tensor) -> bool:
    writer.write(seq, values.numpy())
    return True


def test_a_slot_claim_the_server_cannot_honour_is_rejected_and_changes_nothing():
    def claims(w, welcome):
        assert "shm_push" not in welcome.settings  # server.transport zmq: no slot
        return _claim(w)

    reply, final = _serve("zmq", claims)
    assert isinstance(reply, Reject) and reply.code == "no_shm_slot" and "send the values" in reply.message
    assert torch.equal(final, torch.zeros(N))

    def bad(w, welcome):
        writer = _open_advertised(welcome.settings)
        writer.write(w.seq + 1, np.ones(N, np.float32))  # the slot holds another push than the one named
        stale = _claim(w)
        both = _claim(w, values=torch.ones(N))  # a values frame as well
        sparse = _claim(w, encoding="sparse")
        writer.close()
        return stale, both, sparse

    (stale, both, sparse), final = _serve("auto", bad)
    assert (stale.code, both.code, sparse.code) == ("stale_slot", "bad_field", "bad_field")
    assert torch.equal(final, torch.zeros(N))


def test_a_resent_push_the_server_answered_is_never_read_from_the_slot_again():
    (g0,) = _grads(1)

    def resend(w, welcome):
        writer = _open_advertised(welcome.settings)
        writer.write(0, g0.numpy())
        first = _claim(w)
        writer.write(0, np.full(N, np.nan, np.float32))  # were it read again, the server would refuse it
        again = _claim(w, seq=0, advance=False)
        writer.close()
        return first, again

    (first, again), final = _serve("auto", resend)
    assert isinstance(again, Reply) and (again.seq, again.version) == (first.seq, first.version) == (0, 1)
    _, zmq_final = _serve("zmq", lambda w, welcome: w.push(g0))
    assert torch.equal(final, zmq_final)


# -- the worker ------------------------------------------------------------------------------------------------


def _push(seq: int, values: torch.Tensor | None, encoding: str = "dense") -> Push:
    return Push(0, seq, 0, "grad", encoding, N, 0.0, 1, values=values)


def test_the_worker_writes_its_slot_only_while_no_push_was_refused_since_its_last_reply():
    from ps.shared_params import SharedParams

    shared = SharedParams(ExperimentConfig(server=ServerConfig(transport="auto")), "slot", N)
    settings = {**shared.advert(), **shared.push_advert(0)}
    stats = WorkerReport()
    worker = ShmParams(ExperimentConfig(server=ServerConfig(transport="auto")), 0, stats)
    assert worker.attach(settings, N) is None and worker.slot is not None
    sent = worker.place(_push(0, torch.full((N,), 2.0)))
    assert sent.values is None and sent.values_in_shm and stats.pushes_via_shm == 1
    assert torch.equal(shared.push_values(sent), torch.full((N,), 2.0))
    worker.answered(refused=True, code="nonfinite")
    assert worker.place(_push(1, torch.ones(N))).values is not None  # refused: over ZeroMQ until a Reply
    worker.answered(refused=False)
    assert worker.place(_push(1, torch.ones(N))).values_in_shm
    for other in (_push(2, torch.ones(N).half()), _push(2, torch.ones(N - 1)), _push(2, None, "sign")):
        assert not worker.place(other).values_in_shm  # only dense float32 of the whole vector
    worker.answered(refused=True, code="no_shm_slot")
    assert worker.slot is None
    worker.close()
    shared.close()
    assert list(Path(shm.SHM_DIR).glob(shm.prefix("slot") + "*")) == []


def test_a_gradient_computed_in_the_slot_is_published_without_a_copy_and_only_while_the_slot_is_clean():
    from ps.shared_params import SharedParams

    cfg = ExperimentConfig(server=ServerConfig(transport="auto"))
    shared = SharedParams(cfg, "slot", N)
    own, bound = torch.zeros(N), []
    stats = WorkerReport()
    worker = ShmParams(cfg, 0, stats, bind_grad=lambda buf: bound.append(own if buf is None else buf))
    assert worker.attach({**shared.advert(), **shared.push_advert(0)}, N) is None
    grad = bound[-1]
    assert grad.data_ptr() == torch.from_numpy(worker.slot.values).data_ptr()  # the model's gradient is the slot
    worker.before_gradient()
    assert worker.slot._m.written[0] == 0  # while backward writes, the slot names no push
    grad.fill_(3.0)  # backward
    sent = worker.place(_push(0, grad))
    assert sent.values_in_shm and stats.pushes_computed_in_slot == stats.pushes_via_shm == 1
    assert torch.equal(shared.push_values(sent), torch.full((N,), 3.0))
    worker.answered(refused=True, code="nonfinite")  # a resent copy may still be staged: not into the slot now
    assert bound[-1] is own and not worker.place(_push(1, own)).values_in_shm
    worker.before_gradient()
    assert int(worker.slot._m.written[0]) == 1  # the slot, no longer the gradient, keeps naming push 0
    worker.answered(refused=False)
    assert bound[-1].data_ptr() == grad.data_ptr()
    worker.answered(refused=True, code="no_shm_slot")  # the slot goes: the gradient first leaves it
    assert bound[-1] is own and worker.slot is None
    worker.close()
    shared.close()


def test_a_flat_model_moves_its_gradient_to_another_buffer_and_backward_accumulates_there():
    from worker.tasks.flat import FlatModel

    net = FlatModel(torch.nn.Linear(3, 2), torch.device("cpu"))
    own, other = net.grad, torch.full((net.numel,), 7.0)
    net.zero_grad()
    net.model(torch.ones(1, 3)).sum().backward()
    expected = own.clone()
    net.use_grad(other)
    assert net.grad is other and torch.equal(other, expected)  # it holds the gradient so far
    net.zero_grad()
    net.model(torch.ones(1, 3)).sum().backward()
    assert torch.equal(other, expected) and all(p.grad.data_ptr() >= other.data_ptr() for p in net.model.parameters())
    with pytest.raises(ValueError, match="float32"):
        net.use_grad(torch.zeros(net.numel, dtype=torch.float64))


def test_a_rank_taken_over_by_another_connection_gets_a_new_slot_the_old_holder_cannot_write():
    """An evicted holder that is still alive keeps its mapping of the rank's slot and may write it at its next
    push; the next holder's pushes must be read from a slot of its own."""
    from ps.shared_params import SharedParams

    cfg = ExperimentConfig(server=ServerConfig(transport="auto"))
    shared = SharedParams(cfg, "takeover", N)
    first = {**shared.advert(), **shared.push_advert(0, b"conn-1")}
    assert shared.push_advert(0, b"conn-1") == {"shm_push": first["shm_push"]}  # the same holder: the same slot
    old, new = ShmParams(cfg, 0, WorkerReport()), ShmParams(cfg, 0, WorkerReport())
    assert old.attach(first, N) is None and old.slot is not None
    second = {**shared.advert(), **shared.push_advert(0, b"conn-2")}
    assert second["shm_push"]["name"] != first["shm_push"]["name"]
    assert not (shm.SHM_DIR / first["shm_push"]["name"]).exists()  # unlinked: nobody can open it again
    assert new.attach(second, N) is None
    pushed = new.place(_push(5, torch.full((N,), 2.0)))
    old.place(_push(5, torch.full((N,), 9.0)))  # the old holder writes the same seq into its own (old) mapping
    assert torch.equal(shared.push_values(pushed), torch.full((N,), 2.0))
    for holder in (old, new):
        holder.close()
    shared.close()
