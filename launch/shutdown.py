"""Finishing a run after a failure or a stop signal: the children stop in order, each given the time it needs
to leave its results, so that a failed run still has server_summary.json, final.safetensors and its score.

A SIGTERM asks each role to end cleanly (the server stops, tells the workers Stop and writes its records
within server.stop_grace_s; a sync rank carries the stop into the next collective and rank 0 writes them;
a worker leaves between steps); SIGKILL follows only after that time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launch.supervisor import Supervisor

STOP_MARGIN_S = 5.0  # beyond server.stop_grace_s: final.safetensors, server_summary.json and the interpreter's exit
WORKER_GRACE_S = 3.0  # a worker leaves between steps within worker/host.py's CANCEL_GRACE_S (2.5 s)
EVALUATOR_GRACE_S = 3.0  # an evaluator with no final snapshot to score is simply stopped


@dataclass(frozen=True)
class Stage:
    what: str  # for the message, e.g. "the server"
    names: list[str]  # the children of this stage, by name
    grace_s: float  # SIGTERM, then SIGKILL after this long


def stop_in_order(sup: Supervisor, stages: list[Stage], say: Callable[[str], None]) -> None:
    """Stop each stage's live children in turn; the ones of a later stage keep running meanwhile (workers
    still get the server's Stop and leave cleanly while the server winds down)."""
    for stage in stages:
        live = [n for n in stage.names if n in sup.children and sup.children[n].returncode is None]
        if live:
            say(f"stopping {stage.what} (up to {stage.grace_s:g}s)")
            sup.terminate_all(grace_s=stage.grace_s, only=live)


def let_evaluator_finish(sup: Supervisor, run_dir: Path, timeout_s: float, say: Callable[[str], None]) -> None:
    """Let the evaluator score final.safetensors when the stop left one (at most timeout_s); otherwise stop it,
    as it would wait for a snapshot that never comes."""
    evaluator = sup.children.get("evaluator")
    if evaluator is None or evaluator.returncode is not None:
        return
    if (run_dir / "snapshots" / "final.safetensors").exists():
        say(f"scoring the final snapshot (up to {timeout_s:g}s)")
        if sup.wait(["evaluator"], timeout_s):
            return
    sup.terminate_all(grace_s=EVALUATOR_GRACE_S, only=["evaluator"])
