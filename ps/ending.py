"""The server's last act, once every worker was told to stop: the EF21 drift measured once more, the final
checkpoint, and server_summary.json with the last status and snapshot (ps/reporting.py writes them)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from protocol.runfolder.records import ServerSummary
from protocol.wire.endpoints import is_local
from ps import durable

if TYPE_CHECKING:
    from ps.model import ServedModel
    from ps.server import ParameterServer


def finish(server: ParameterServer) -> ServerSummary:
    model, plan, chan = server.model, server.plan, server.chan
    model.agg.recompute()  # measure the drift left at the end too
    if plan is not None and server.cfg.checkpoint.at_end and model.at_boundary():
        durable.checkpoint(server, plan, final=True)
    summary = server.report.summary(
        updates=server.version,
        stop_reason=server.stop_reason,
        wall_s=server.wall(),
        started_unix=time.time() - server.wall() if server.t_start is not None else None,
        num_params=model.numel,
        ef_drift_max=model.agg.drift_max,
        **downlink_fields(model),
        steps_clipped=model.steps_clipped,
        workers={str(r): m.report() for r, m in sorted(server.members.members.items())},
        replies_dropped=server.out.dropped,
        **(durable.summary_fields(plan) if plan else {}),
        workers_left=sorted(set(server.evicted)),
        auth="curve" if chan.curve else "none",
        insecure=not chan.curve and not is_local(chan.endpoint or ""),
    )
    server.report.finish(summary, server.status(), server.params, model.mean_buffers())
    if model.shared is not None:
        model.shared.close()
    return summary


def downlink_fields(model: ServedModel) -> dict[str, object]:
    """The compressed downlink's counts for the summary (none with dense replies)."""
    d = model.downlink
    if d is None:
        return {}
    return {"downlink": "topk", "downlink_resets": d.resets, "downlink_deltas": d.deltas, "downlink_gap_max": d.gap_max}
