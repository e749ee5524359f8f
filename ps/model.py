"""The served model: parameters, their layout, the optimizer, the aggregator and the buffers around them.

Created once, when the server starts, from the initial model the launcher hands over (ModelInit), and
held by the server as one object. The two-phase push path lives here:
    staged = model.stage(push)            # validate + decode; raises ProtocolError; changes nothing
    stepped = model.apply(rank, staged)   # fold in; step the optimizer when a group is complete
    ... replies ...
    model.settle()                        # work no reply waits for: a step streamed into shared memory
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from protocol.config.schema import ExperimentConfig
from protocol.errors import ProtocolError
from protocol.runfolder.model_init import ModelInit
from protocol.wire.buffers import SendPool
from protocol.wire.encoding import require_finite
from protocol.wire.layout import Layout
from protocol.wire.messages import Push
from ps.aggregate import Aggregator, Staged, make_aggregator
from ps.arena import RecvArena
from ps.downlink import Downlink
from ps.history import ParamHistory
from ps.optim import Optimizer, make_optimizer
from ps.shared_params import SharedParams


@dataclass
class ServedModel:
    layout: Layout
    params: torch.Tensor  # flat float32 (layout.total,), updated in place by every step
    opt: Optimizer
    agg: Aggregator
    pool: SendPool  # snapshot buffers for zero-copy replies
    arena: RecvArena  # preallocated receive buffers for pushes
    history: ParamHistory | None = None  # artificial delay: the last D versions
    buffer_layout: Layout = field(default_factory=lambda: Layout([]))  # the model's buffers (BatchNorm stats)
    buffers: dict[int, torch.Tensor] = field(default_factory=dict)  # per rank: the latest buffers it sent
    init_buffers: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # before any worker sent some
    version: int = 0  # optimizer steps taken
    max_norm: float | None = None  # server.max_grad_norm: steps whose direction is longer are scaled down
    steps_clipped: int = 0
    group_lrs: list[float] = field(default_factory=list)  # lrs of the pushes folded into the next step
    _clip: torch.Tensor | None = None  # the scaled direction (the aggregator's g must stay as it is)
    shared: SharedParams | None = None  # same-host workers read the parameters from shared memory
    shard: int = 0  # server.shards > 1: which shard this server is; it serves coordinates [lo, lo + numel)
    lo: int = 0
    downlink: Downlink | None = None  # server.downlink topk: the workers' copies, and the deltas that track them
    _pending: tuple[torch.Tensor, float, int] | None = None  # a step whose version is begun, not yet taken

    @classmethod
    def create(cls, cfg: ExperimentConfig, init: ModelInit, shard: int = 0) -> ServedModel:
        """The whole model, or shard `shard`'s range of it (docs/design.md, Shards): `layout` stays the whole
        model's (a Hello is checked against it), `params` and every state hold the range only.

        Raises ProtocolError (code 'config') when the artificial delay's history would exceed its memory cap;
        nothing is allocated before that check."""
        layout, st = init.layout, cfg.staleness
        lo, hi = layout.shard_ranges(cfg.server.shards)[shard]
        numel = hi - lo
        if st.delay != "none":
            need = ParamHistory.memory_mb(numel, st.delay_versions)
            if need > st.delay_memory_mb:
                raise ProtocolError(
                    "config",
                    f"staleness.delay_versions={st.delay_versions} needs {need:.0f} MB for {numel} parameters, "
                    f"over staleness.delay_memory_mb={st.delay_memory_mb:g}",
                )
        params = init.params.reshape(-1)[lo:hi].to(torch.float32).clone()
        model = cls(
            layout=layout,
            params=params,
            opt=make_optimizer(params, cfg.optimizer),
            agg=make_aggregator(cfg.compression.ef21, numel, cfg.compression.resync_every, st.apply_every),
            pool=SendPool(numel, max_buffers=2 * cfg.workers + 4),  # one reply in flight per worker, and slack
            arena=RecvArena(numel, init.buffer_layout.total),
            max_norm=cfg.server.max_grad_norm,
            buffer_layout=init.buffer_layout,
            init_buffers=init.buffers.reshape(-1).float().clone(),
            shared=SharedParams(cfg, init.run_id, numel),
            shard=shard,
            lo=lo,
        )
        if cfg.server.downlink == "topk":
            model.downlink = Downlink(numel, cfg.server.downlink_ratio, seed=cfg.seed)
        if st.delay != "none":
            model.history = ParamHistory(numel, st.delay_versions, st.delay, cfg.seed)
            model.history.record(0, params)
        return model

    @property
    def numel(self) -> int:
        """The coordinates this server serves (the whole layout, or its shard's range)."""
        return self.params.numel()

    def stage(self, push: Push) -> Staged:
        """Validate and decode (buffers too, if the push carries some); raises ProtocolError, changes nothing.
        A push with values_in_shm gets `values` set to a view of its slot (ps/shared_params.py, push_values)."""
        if push.buffers is not None:
            check_buffers(push.buffers, self.buffer_layout.total)
        if push.values_in_shm:  # the values are in the rank's push slot: staged from a view of it, no copy
            if self.shared is None:
                raise ProtocolError("no_shm_slot", f"rank {push.rank} has no push slot on this server")
            push.values = self.shared.push_values(push)
        return self.agg.stage(push)

    def note_buffers(self, rank: int, buffers: torch.Tensor | None) -> None:
        """Keep the latest buffers of a rank whose push was staged (buffers are statistics, not a step)."""
        if buffers is None:
            return
        held = self.buffers.get(rank)
        if held is None:
            self.buffers[rank] = held = torch.empty_like(self.init_buffers)
        held.copy_(buffers.reshape(-1))

    def mean_buffers(self) -> torch.Tensor:
        """What snapshots and checkpoints serve: the mean over workers of their latest buffers."""
        if not self.buffers:
            return self.init_buffers
        # float64: the mean of equal values is that value again (a float32 mean of 3 can be 1 ulp off)
        return torch.stack(list(self.buffers.values())).double().mean(dim=0).float()

    def apply(self, rank: int, staged: Staged, lr: float, stream: bool = False) -> bool:
        """Fold an accepted push in; step the optimizer when a group of apply_every pushes is complete. stream:
        the pusher reads the segment, so a step is only begun there now and taken by finish_step."""
        self.group_lrs.append(lr)
        return self._step(self.agg.apply(rank, staged), rank, stream)

    def _step(self, direction: torch.Tensor | None, rank: int, stream: bool = False) -> bool:
        if direction is None:
            return False
        group_lr = sum(self.group_lrs) / len(self.group_lrs)  # apply_every: the mean lr of the group
        self.group_lrs.clear()
        self.version += 1
        if stream and self.history is None and self.shared is not None and self.shared.begin(self.version):
            self._pending = (self._clipped(direction), group_lr, rank)  # streamed into the segment by finish_step
            return True
        self.opt.step(self._clipped(direction), group_lr, rank)
        if self.history is not None:
            self.history.record(self.version, self.params)
        return True

    def finish_step(self) -> None:
        """Take the step whose version the segment has begun (docs/design.md, Streamed steps): chunk by chunk,
        each chunk published while it is in cache, so same-host workers told of the version copy it as it
        comes. Anything that reads the parameters calls this first."""
        if self._pending is None:
            return
        direction, lr, rank = self._pending
        self._pending = None
        assert self.shared is not None
        chunks = getattr(self.opt, "step_chunks", None)
        if chunks is None:  # an optimizer without chunks: one step, then the whole vector
            self.opt.step(direction, lr, rank)
            self.shared.write(self.params)
        else:
            done = 0
            for upto in chunks(direction, lr, rank):
                self.shared.write(self.params[done:upto])
                done = upto
        self.shared.end()

    def settle(self) -> None:
        """Work the last applied push left for after its reply: the streamed step (finish_step), then
        Aggregator.settle (EF21's add into g_i)."""
        self.finish_step()
        self.agg.settle()

    def shm_version(self) -> int | None:
        """The version a reply to a same-host worker names: the one being streamed, else the reply's version
        published into the segment now if it is not there yet; None without a segment."""
        if self.shared is None:
            return None
        if self._pending is not None:  # being streamed: publish finds it begun and copies nothing
            version, source = self.version, self.params
        else:
            version, source = self.outgoing(delayed=True)
        return version if self.shared.publish(version, source) else None

    def set_group(self, size: int, rank: int = 0) -> bool:
        """Steps take `size` pushes from now on (workers left); steps at once if the open group is full (taken
        whole here: no settle follows this path)."""
        stepped = self._step(self.agg.set_group(size), rank)
        self.finish_step()
        return stepped

    def at_boundary(self) -> bool:
        """Whether no group is open: a checkpoint taken now has no push half-folded into a step."""
        return not self.group_lrs

    def forget_buffers(self, rank: int) -> None:
        self.buffers.pop(rank, None)

    def _clipped(self, direction: torch.Tensor) -> torch.Tensor:
        """The direction, scaled to norm max_norm when it is longer (torch's clip_grad_norm_ on one step)."""
        if self.max_norm is None:
            return direction
        norm = float(torch.linalg.vector_norm(direction))
        if norm <= self.max_norm:
            return direction
        self.steps_clipped += 1
        if self._clip is None:
            self._clip = torch.empty_like(direction)
        return torch.mul(direction, self.max_norm / norm, out=self._clip)

    def outgoing(self, delayed: bool) -> tuple[int, torch.Tensor]:
        """(version, parameters) a reply carries: now, or with an artificial delay an older stored version."""
        self.finish_step()
        if delayed and self.history is not None:
            return self.history.pick(self.version)
        return self.version, self.params


def check_buffers(buffers: torch.Tensor, numel: int) -> None:
    if buffers.dtype != torch.float32 or buffers.dim() != 1 or buffers.numel() != numel:
        raise ProtocolError("bad_shape", f"buffers must be float32 of shape ({numel},), got {tuple(buffers.shape)}")
    require_finite(buffers, "buffers")
