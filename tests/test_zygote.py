"""The fork server (launch/zygote.py): a role forked from it is what `python -m module args` would be."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch import zygote
from launch.supervisor import Supervisor

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fork server is Linux only")


def _start(sup: Supervisor, tmp: Path, name: str, mode: str):
    return sup.start(name, "tests.zygote_role", [mode, str(tmp / f"{name}.json")], env={"ROLE_VALUE": name})


def test_a_forked_role_gets_its_args_env_folder_session_and_log_and_ends_as_python_would(tmp_path):
    sup = Supervisor(tmp_path / "logs", fork_server=True)
    try:
        cases = {"ok": 0, "exit3": 3, "text": 1, "raise": 1, "kill": -signal.SIGKILL}
        children = {mode: _start(sup, tmp_path, mode, mode) for mode in cases}
        for mode, rc in cases.items():
            assert children[mode].popen.wait(timeout=60) == rc, mode
            assert isinstance(children[mode].popen, zygote.ForkedProcess)
            facts = json.loads((tmp_path / f"{mode}.json").read_text())
            assert facts["argv"] == [mode, str(tmp_path / f"{mode}.json")] and facts["env"] == mode
            assert facts["cwd"] == os.getcwd() and facts["session"] and facts["name"] == "__main__"
            log = (tmp_path / "logs" / f"{mode}.log").read_text()
            assert f"role says {mode}" in log
        assert (tmp_path / "ok.json.atexit").exists() and (tmp_path / "exit3.json.atexit").exists()
        assert not (tmp_path / "kill.json.atexit").exists()
        assert "a reason" in (tmp_path / "logs" / "text.log").read_text()
        assert "RuntimeError: boom" in (tmp_path / "logs" / "raise.log").read_text()
    finally:
        sup.terminate_all()
        sup.close()


def test_terminate_all_stops_forked_roles_and_close_ends_the_zygote(tmp_path):
    sup = Supervisor(tmp_path / "logs", fork_server=True)
    assert sup.zygote is None  # launched at the first start (or warm), not when the supervisor is made
    sup.warm()
    z = sup.zygote
    assert z is not None
    child = _start(sup, tmp_path, "sleeper", "sleep")
    deadline = time.monotonic() + 60
    while not (tmp_path / "sleeper.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    sup.terminate_all(grace_s=5)
    assert child.returncode == -signal.SIGTERM
    sup.close()
    assert z.proc.returncode is not None and sup.zygote is None


def test_a_zygote_that_cannot_start_leaves_the_run_on_fresh_interpreters(tmp_path, monkeypatch, capfd):
    def broken(env, log_path, preexec=None):
        proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)  # fmt: skip
        return zygote.Zygote(proc)

    monkeypatch.setattr(zygote.Zygote, "launch", staticmethod(broken))
    sup = Supervisor(tmp_path / "logs", fork_server=True)
    try:
        child = _start(sup, tmp_path, "role", "exit3")
        assert child.popen.wait(timeout=60) == 3
        assert isinstance(child.popen, subprocess.Popen) and sup.zygote is None
        assert "the fork server failed (the zygote ended (exit code 7)" in capfd.readouterr().err
    finally:
        sup.terminate_all()
        sup.close()


def _until(done, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_role_that_outlives_a_killed_zygote_is_watched_until_it_ends(tmp_path, capfd):
    sup = Supervisor(tmp_path / "logs", fork_server=True)
    try:
        child = _start(sup, tmp_path, "lingerer", "linger")
        _until((tmp_path / "lingerer.json").exists)
        assert sup.zygote is not None
        sup.zygote.proc.kill()  # the zygote dies; the role gets SIGTERM and takes its time to stop
        _until((tmp_path / "lingerer.json.term").exists)
        sup.zygote.proc.wait(timeout=30)
        assert child.returncode is None and child.ps is not None and child.ps.is_running()
        (tmp_path / "lingerer.json.release").touch()
        assert child.popen.wait(timeout=60) == -signal.SIGTERM
        assert child.orphaned and "death of the fork server" in child.describe_exit()
        assert (tmp_path / "lingerer.json.atexit").exists()  # it had ended, not just been given up on
        assert "the fork server ended (exit code -9)" in capfd.readouterr().err
    finally:
        (tmp_path / "lingerer.json.release").touch()
        sup.terminate_all()
        sup.close()


def test_what_the_zygotes_interpreter_prints_to_stdout_never_reaches_the_launchers_channel(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    # a user's sitecustomize printing as the interpreter starts, and a module the zygote imports printing (from
    # Python and from C) once the zygote runs
    (site / "sitecustomize.py").write_text(
        "import os, sys\nprint('{not json')\nprint('[1, 2]')\n"
        "class Noisy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'msgpack':\n"
        "            print('import-time noise')\n"
        "            os.write(1, b'raw noise\\n')\n"
        "sys.meta_path.insert(0, Noisy())\n"
    )
    sup = Supervisor(tmp_path / "logs", env={"PYTHONPATH": str(site)}, fork_server=True)
    try:
        child = _start(sup, tmp_path, "role", "exit3")
        assert child.popen.wait(timeout=60) == 3
        assert isinstance(child.popen, zygote.ForkedProcess)
        assert sup.zygote is not None and sup.zygote.ready
    finally:
        sup.terminate_all()
        sup.close()
    assert "import-time noise\nraw noise" in (tmp_path / "logs" / "zygote.log").read_text()
    assert "noise" not in (tmp_path / "logs" / "role.log").read_text()  # printed once, by the zygote, not again


def test_an_argument_that_is_no_utf8_reaches_a_forked_role_as_it_would_a_fresh_interpreter(tmp_path):
    odd = os.fsdecode(b"run-\xff\xfe")  # a path's raw bytes, as Linux allows and sys.argv holds them
    sup = Supervisor(tmp_path / "logs", fork_server=True)
    try:
        child = sup.start("odd", "tests.zygote_role", ["ok", str(tmp_path / "odd.json"), odd])
        assert child.popen.wait(timeout=60) == 0
        assert isinstance(child.popen, zygote.ForkedProcess)
        assert json.loads((tmp_path / "odd.json").read_text())["argv"][2] == odd
    finally:
        sup.terminate_all()
        sup.close()


def test_a_request_a_stopped_zygote_cannot_take_fails_within_the_timeout_and_the_role_starts_fresh(
    tmp_path, monkeypatch, capfd
):
    monkeypatch.setattr(zygote, "ANSWER_TIMEOUT_S", 1.0)
    sup = Supervisor(tmp_path / "logs", fork_server=True)
    try:
        first = _start(sup, tmp_path, "first", "ok")  # the zygote is ready and has forked once
        assert isinstance(first.popen, zygote.ForkedProcess) and first.popen.wait(timeout=60) == 0
        assert sup.zygote is not None
        os.kill(sup.zygote.proc.pid, signal.SIGSTOP)  # it stops reading: a request over the pipe's 64 KiB blocks
        t0 = time.monotonic()
        env = {"ROLE_VALUE": "big", **{f"BIG_{i}": "x" * 60_000 for i in range(5)}}  # exec takes each < 128 KiB
        big = sup.start("big", "tests.zygote_role", ["ok", str(tmp_path / "big.json")], env=env)
        assert time.monotonic() - t0 < 30
        assert isinstance(big.popen, subprocess.Popen) and big.popen.wait(timeout=60) == 0
        assert "took no request within 1s" in capfd.readouterr().err and sup.zygote is None
    finally:
        sup.terminate_all()
        sup.close()


def test_a_stop_signal_ends_the_wait_for_the_zygotes_imports(tmp_path, monkeypatch):
    """Ctrl-C while the fork server still imports (up to READY_TIMEOUT_S on a loaded machine) acts at once."""
    from launch.signals import Stopped

    def importing(env, log_path, preexec=None):  # a zygote that never gets ready
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, start_new_session=True)  # fmt: skip
        return zygote.Zygote(proc)

    calls = []

    def check():
        calls.append(time.monotonic())
        if len(calls) > 3:
            raise Stopped(signal.SIGINT)

    monkeypatch.setattr(zygote.Zygote, "launch", staticmethod(importing))
    sup = Supervisor(tmp_path / "logs", fork_server=True, check_stop=check)
    try:
        t0 = time.monotonic()
        with pytest.raises(Stopped):
            _start(sup, tmp_path, "role", "ok")
        assert time.monotonic() - t0 < 10
    finally:
        sup.terminate_all()
        assert sup.zygote is not None
        sup.zygote.close(kill=True)
