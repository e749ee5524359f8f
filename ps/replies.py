"""What a Reply says about the push it answers (an Outcome), and the one place a Reply is built."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
    rank: int = -1  # the pusher (-1: a pull, answered with the parameters whole)
    copy_id: int = -1  # server.downlink topk: the copy of the parameters the push said the worker holds


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
    if model.downlink is not None and outcome.rank >= 0:  # docs/design.md, Compressed downlink
        answer = model.downlink.answer(outcome.rank, outcome.copy_id, source)
        reply.copy_id, reply.copy_base = answer.copy_id, answer.copy_base
        if answer.indices is not None:
            reply.indices, reply.values = wire_indices(answer.indices), answer.values
            out.send(identity, reply)  # the delta's tensors are its own: nothing changes them
            return
    out.send_params(identity, reply, source, model.pool)


def wire_indices(indices: torch.Tensor) -> torch.Tensor:
    """int32 indices where they fit (4 bytes, not 8, per coordinate)."""
    return indices.to(torch.int32) if indices.numel() and int(indices[-1]) < 2**31 else indices
