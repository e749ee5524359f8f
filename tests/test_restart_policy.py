"""Which dead children the launcher restarts under run.max_restarts (docs/fault-tolerance.md)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from launch.run import AsyncRun
from tests.helpers import make_config


@pytest.mark.parametrize(("name", "code", "restart"), [
    ("server", -9, True), ("server", 1, True),  # killed, or crashed: resume from the checkpoint
    ("server", 3, False),  # ended the run itself (too few workers left): a restart would end it again
    ("server", 2, False),  # its config or checkpoint is refused: so would the restart's
    ("worker0", 1, True), ("evaluator", -15, True),
])  # fmt: skip
def test_a_server_that_ended_the_run_on_purpose_is_not_restarted(tmp_path, name, code, restart):
    run = AsyncRun(make_config(run={"max_restarts": 1}), tmp_path, quiet=True)
    run.sup.children[name] = SimpleNamespace(returncode=code)
    assert run._restartable(name) is restart


def test_a_role_that_the_fork_servers_death_ended_is_not_restarted(tmp_path):
    run = AsyncRun(make_config(run={"max_restarts": 3}), tmp_path, quiet=True)
    for name in ("server", "worker0"):
        child = SimpleNamespace(name=name, pid=1, returncode=-15, orphaned=True)
        run.sup.children[name] = child
        assert run._schedule_restart(child) is False, name  # type: ignore[arg-type]
    assert not run.restarts.counts
