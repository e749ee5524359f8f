"""The supervisor stops exactly the children it is asked to stop."""

from launch.supervisor import Supervisor

SLEEP = ["-n", "1", "-r", "1", "import time; time.sleep(60)"]  # python -m timeit: blocks for a minute


def test_terminate_only_named_children(tmp_path):
    sup = Supervisor(tmp_path / "logs")
    try:
        sup.start("worker0", "timeit", SLEEP)
        sup.start("evaluator", "timeit", SLEEP)
        sup.terminate_all(grace_s=2.0, only=["worker0"])
        assert sup.children["worker0"].returncode is not None
        assert sup.children["evaluator"].returncode is None, "the evaluator was stopped too"
        sup.terminate_all(grace_s=2.0)
        assert all(c.returncode is not None for c in sup.children.values())
    finally:
        sup.terminate_all(grace_s=1.0)
