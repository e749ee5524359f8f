"""Child processes of a run: start them, watch them with psutil, tear them all down.

Each child runs in its own session (so a terminal Ctrl-C reaches only the launcher, which then stops
everyone in order) with stdout and stderr in logs/<name>.log. On Linux each child also gets SIGTERM when the
launcher dies (prctl PR_SET_PDEATHSIG): a launcher killed with SIGKILL cannot stop them, and they would
otherwise train on as orphans until run.max_seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from launch.writes import writing
from launch.zygote import ForkedProcess, Popen, Zygote, ZygoteError, dies_with

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Child:
    name: str
    popen: Popen
    log_path: Path
    started: float
    ps: psutil.Process | None = None
    cpu_samples: list = field(default_factory=list)
    rss_peak: int = 0
    command: tuple[str, list[str], dict] = ("", [], {})  # module, args, env: what a restart runs again

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    @property
    def killed(self) -> bool:
        """Whether it has ended by a signal (a negative return code)."""
        rc = self.returncode
        return rc is not None and rc < 0

    @property
    def orphaned(self) -> bool:
        """Whether it ended with the fork server that forked it (which sent it SIGTERM as it died)."""
        return isinstance(self.popen, ForkedProcess) and self.popen.orphaned

    def describe_exit(self) -> str:
        rc = self.popen.returncode
        if rc is None:
            return "is still running"
        if self.orphaned:
            return "was ended by the death of the fork server that forked it (logs/zygote.log)"
        if rc < 0:
            try:
                sig = signal.Signals(-rc).name
            except ValueError:
                sig = str(-rc)
            return f"was killed by signal {sig}"
        return f"exited with code {rc}"

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log_path.read_text(errors="replace").rstrip().splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in text[-lines:])


class Supervisor:
    def __init__(
        self,
        log_dir: Path,
        env: dict | None = None,
        fork_server: bool = False,
        check_stop: Callable[[], None] | None = None,
    ):
        """fork_server: start the roles from a zygote (launch/zygote.py) when this host can run one. check_stop:
        called while the zygote's imports are awaited (the launcher's signal check: Ctrl-C ends that wait)."""
        self.check_stop = check_stop
        self.log_dir = log_dir
        with writing(log_dir):
            log_dir.mkdir(parents=True, exist_ok=True)
        self.children: dict[str, Child] = {}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        path = self.env.get("PYTHONPATH", "")
        self.env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT)
        self.zygote: Zygote | None = None
        self._fork_server = fork_server and sys.platform.startswith("linux")  # launched by warm() or start()

    def warm(self) -> None:
        """Launch the fork server now, if there is to be one, so its imports run while the caller does other
        work (the launcher builds the model); start() waits for them."""
        if self._fork_server:
            self._fork_server = False  # one attempt per run
            with writing(self.log_dir / "zygote.log"):
                self.zygote = Zygote.launch(self.env, self.log_dir / "zygote.log", dies_with(os.getpid()))

    def start(self, name: str, module: str, args: list[str], env: dict | None = None, append: bool = False) -> Child:
        """Start `python -m module args` as child `name` (append: a restart, its log goes on after a marker):
        forked from the zygote when there is one, else a fresh interpreter."""
        log_path = self.log_dir / f"{name}.log"
        with writing(log_path), open(log_path, "a" if append else "w") as log:
            if append:
                log.write(f"--- {name} restarted by the launcher ---\n")
        popen = self._fork(name, module, args, {**self.env, **(env or {})}, log_path)
        child = Child(name, popen, log_path, time.monotonic(), command=(module, list(args), dict(env or {})))
        try:
            child.ps = psutil.Process(popen.pid)
            child.ps.cpu_percent(None)
        except psutil.Error:
            pass
        self.children[name] = child
        return child

    def _fork(self, name: str, module: str, args: list[str], env: dict, log_path: Path) -> Popen:
        self.warm()
        if self.zygote is not None:
            try:
                return self.zygote.spawn(name, module, args, env, log_path, check=self.check_stop)
            except ZygoteError as err:  # a run goes on without it: every later role starts fresh
                print(f"launcher: the fork server failed ({err}); starting fresh interpreters", file=sys.stderr)
                self.zygote.close(kill=True)
                self.zygote = None
        with open(log_path, "a") as log:  # the child holds its own copy of the descriptor
            return subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd=os.getcwd(),
                preexec_fn=dies_with(os.getpid()),
            )

    def close(self) -> None:
        """After terminate_all: the zygote ends (its roles have)."""
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None

    def sample(self) -> list[tuple[str, int, float, int]]:
        """(name, pid, cpu %, rss bytes) of every live child, for processes.csv."""
        rows = []
        for c in self.children.values():
            if c.ps is None or c.returncode is not None:
                continue
            try:
                with c.ps.oneshot():
                    cpu, rss = c.ps.cpu_percent(None), c.ps.memory_info().rss
            except psutil.Error:
                continue
            c.cpu_samples.append(cpu)
            c.rss_peak = max(c.rss_peak, rss)
            rows.append((c.name, c.pid, cpu, rss))
        return rows

    def exited(self) -> list[Child]:
        return [c for c in self.children.values() if c.returncode is not None]

    def running(self) -> list[Child]:
        return [c for c in self.children.values() if c.returncode is None]

    def wait(self, names: list[str], timeout_s: float) -> bool:
        """Wait until the named children exit; True when all did within the timeout."""
        deadline = time.monotonic() + timeout_s
        for name in names:
            c = self.children[name]
            try:
                c.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True

    def terminate_all(self, grace_s: float = 3.0, only: list[str] | None = None) -> None:
        """SIGTERM every live child (its whole process group), then SIGKILL what is left after grace_s.

        only: just these children (by name), e.g. workers that missed the Stop while the evaluator goes on."""
        live = [c for c in self.running() if only is None or c.name in only]
        for c in live:
            _signal_group(c.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for c in live:
            try:
                c.popen.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(c.pid, signal.SIGKILL)
        for c in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.popen.wait(timeout=5)

    def process_summary(self) -> dict:
        return {
            c.name: {
                "pid": c.pid,
                "exit": c.returncode,
                "cpu_percent_mean": round(sum(c.cpu_samples) / len(c.cpu_samples), 1) if c.cpu_samples else None,
                "rss_peak_mb": round(c.rss_peak / 2**20, 1),
            }
            for c in self.children.values()
        }


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
