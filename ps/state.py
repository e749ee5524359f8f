"""The server's durable state as one typed object: what a checkpoint writes and a resume reads.

Anything not in it is, by definition, rebuilt on restart: connections (every worker joins again and goes
on from its next sequence number), replies held by SSP or a barrier (checkpoints are taken between
groups, so none is half-folded into a step), the send and receive buffers.

tensors  params; opt/<name> (m, v, v_hat, step; SGD momentum buffers, one per worker when shifted);
         agg/<name> (EF21: g and every g_i; apply_every: the open group's sum); history/ring (the
         artificial delay's stored versions); buffers/<rank> (each worker's latest model buffers)
facts    version, the wall time trained so far, optimizer steps, the aggregator's counters and drift,
         the open group's learning rates, the history's versions and generator state, the staleness
         policy's running window, the SSP clocks, every rank's sequence number and counters, the counters
         behind summary.json, steps clipped, messages dropped
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ps.server import ParameterServer


@dataclass
class ServerState:
    version: int
    wall_s: float
    tensors: dict[str, torch.Tensor]
    facts: dict[str, Any]


def capture(server: ParameterServer) -> ServerState:
    """The state as it is now, tensors by reference (the checkpoint writer copies them before it lets go)."""
    model = server.model
    agg_tensors, agg_facts = model.agg.state()
    tensors = {"params": model.params, **_prefixed("opt", model.opt.state()), **_prefixed("agg", agg_tensors)}
    tensors.update({f"buffers/{r}": b for r, b in model.buffers.items()})
    facts: dict[str, Any] = {
        "version": model.version,
        "wall_s": server.wall(),
        "steps": model.opt.steps,
        "agg": agg_facts,
        "group_lrs": list(model.group_lrs),
        "steps_clipped": model.steps_clipped,
        "policy": server.policy.state(),
        "gate": server.gate.state(),
        "members": server.members.state(),
        "counters": server.report.counters.state(),
        "dropped": server.out.dropped,
    }
    if model.history is not None:
        ring, facts["history"] = model.history.state()
        tensors.update(_prefixed("history", ring))
    return ServerState(model.version, facts["wall_s"], tensors, facts)


def restore(server: ParameterServer, state: ServerState) -> None:
    """Put a checkpoint's state into a freshly created server (same config, same model layout)."""
    model, facts, tensors = server.model, state.facts, state.tensors
    model.params.copy_(tensors["params"])
    model.opt.load_state(_unprefixed("opt", tensors), int(facts["steps"]))
    model.agg.load_state(_unprefixed("agg", tensors), facts["agg"])
    model.version = int(facts["version"])
    model.group_lrs[:] = [float(x) for x in facts["group_lrs"]]
    model.steps_clipped = int(facts["steps_clipped"])
    model.buffers = {int(k.removeprefix("buffers/")): t.clone() for k, t in tensors.items() if k.startswith("buffers/")}
    if model.history is not None:
        model.history.load_state(_unprefixed("history", tensors), facts["history"])
    server.policy.load_state(facts["policy"])
    server.gate.load_state(facts["gate"])
    server.members.load_state(facts["members"])
    server.report.counters.load_state(facts["counters"])
    server.out.dropped = int(facts["dropped"])


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{name}": t for name, t in tensors.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    head = prefix + "/"
    return {name[len(head) :]: t for name, t in tensors.items() if name.startswith(head)}
