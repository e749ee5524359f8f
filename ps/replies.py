"""What a Reply says about the push it answers (an Outcome), and the one place a Reply is built."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.wire.messages import Reply
from ps.model import ServedModel
from ps.outbox import Outbox


@dataclass(frozen=True)
class Outcome:
    """What a Reply says about the push it answers."""

    applied: bool
    reason: str
    staleness: int
    lr: float
    seq: int = -1
    shm: bool = False  # the push asked for the version only: it reads the parameters from shared memory


PULLED = Outcome(False, "pull", 0, 0.0)  # the answer to a Pull: parameters, no push


def send_reply(out: Outbox, model: ServedModel, identity: bytes, outcome: Outcome) -> None:
    """The outcome, and the parameters of now (or, under an artificial delay, older ones); to a push that asked
    for shared memory, the version only, once the segment holds it or is streaming it (ps/model.py,
    finish_step)."""
    in_shm = model.shm_version() if outcome.shm else None
    if in_shm is not None:  # the worker copies the version from the segment, following it if it is being streamed
        out.send(identity, Reply(outcome.applied, outcome.reason, outcome.staleness, in_shm, outcome.lr, outcome.seq))
        return
    version, source = model.outgoing(delayed=True)
    reply = Reply(outcome.applied, outcome.reason, outcome.staleness, version, outcome.lr, outcome.seq)
    out.send_params(identity, reply, source, model.pool)
