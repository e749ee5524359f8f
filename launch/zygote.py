"""A fork server for a run's roles (docs/design.md, Start-up): one interpreter imports torch and the roles'
modules once, then forks each server, worker and evaluator process from that state, instead of every role
starting a fresh interpreter that imports torch again (about 2.5 s of CPU each, on a machine whose cores the
roles share). Linux only; where it cannot start, the supervisor starts fresh interpreters as before.

The launcher's side (Zygote) talks to `python -m launch.zygote` over its stdin and stdout, one JSON object per
line (no pickle); the zygote first moves that stdout to a descriptor of its own and points fd 1 at its log, so
what its imports print cannot reach the launcher, which also skips any line that is no JSON object:

    launcher -> zygote   {"name", "module", "args", "env", "log", "cwd"}   fork a role
    zygote -> launcher   {"ready": pid}                                   once, after the imports
                         {"pid": pid} or {"error": text}                  the answer to each fork, in order
                         {"exit": pid, "rc": rc}                          a role ended (rc < 0: by signal -rc)

A forked role is what `python -m module args` would be: its own session, SIGTERM when the zygote dies (the
zygote itself gets SIGTERM when the launcher dies), stdout and stderr appended to its log, its environment,
sys.argv and working folder set, then runpy runs the module as __main__. The zygote holds no threads of its own
and runs no torch op before it forks (so no thread pool is copied half-alive), and ends once the launcher
closed its stdin and every role it forked has ended.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PRELOAD = ("torch", "numpy", "zmq", "msgpack", "yaml")
# the roles' own modules are run fresh by runpy in each fork (importing them here would run them twice, and
# runpy warns); what they import at their top is imported here
ROLES = ("ps.__main__", "worker.__main__", "launch.evaluate")
READY_TIMEOUT_S = 120.0  # the imports, on a loaded machine
ANSWER_TIMEOUT_S = 30.0


class ZygoteError(RuntimeError):
    """The zygote did not start, or stopped answering."""


def dies_with(parent: int) -> Callable[[], None] | None:
    """A function to run in a new child (a Popen preexec_fn, or first thing after a fork) that has the child get
    SIGTERM when `parent` dies; a parent already gone by then ends the child at once. None where prctl is not
    (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    def in_child() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return in_child


# -- the launcher's side -------------------------------------------------------------------------------------


class Popen(Protocol):
    """What the supervisor uses of a child process: subprocess.Popen, or a ForkedProcess."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


@dataclass
class Zygote:
    """The fork server: spawn() forks a role and returns a Popen-like ForkedProcess."""

    proc: subprocess.Popen
    exits: dict[int, int] = field(default_factory=dict)  # pid -> return code, as the zygote reported them
    ready: bool = False
    forked: list[int] = field(default_factory=list)  # every role's pid, in fork order
    _buf: bytes = b""
    _end_noted: bool = False

    @classmethod
    def launch(cls, env: dict, log_path: Path, preexec: Callable[[], None] | None = None) -> Zygote:
        """Start `python -m launch.zygote` (its stderr in log_path) without waiting for its imports: the first
        spawn() waits for them."""
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "launch.zygote"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,
                preexec_fn=preexec,
            )
        return cls(proc)

    def spawn(
        self, name: str, module: str, args: list[str], env: dict, log: Path, check: Callable[[], None] | None = None
    ) -> ForkedProcess:
        """Fork `python -m module args` as role `name` (its env, stdout and stderr appended to `log`); raises
        ZygoteError when the zygote is not ready within READY_TIMEOUT_S, is gone, or cannot fork. check(): called
        while the imports are awaited; what it raises (the launcher's Stopped, on Ctrl-C) ends the wait."""
        if not self.ready:
            self._expect("ready", READY_TIMEOUT_S, check)
            self.ready = True
        request = {"name": name, "module": module, "args": args, "env": env, "log": str(log), "cwd": os.getcwd()}
        assert self.proc.stdin is not None
        _send(self.proc.stdin.fileno(), json.dumps(request).encode() + b"\n", ANSWER_TIMEOUT_S)
        answer = self._expect("pid", ANSWER_TIMEOUT_S)
        self.forked.append(int(answer["pid"]))
        return ForkedProcess(self, int(answer["pid"]))

    def drain(self) -> None:
        """Read whatever the zygote said since (exit reports), without waiting."""
        self._read(0.0)

    def note_end(self) -> None:
        """Say once on stderr that the zygote has ended while roles it forked ran (each got SIGTERM from it): a
        role's own exit then reads 'killed by signal SIGTERM' and names nothing else."""
        if not self._end_noted:
            self._end_noted = True
            print(f"launcher: the fork server ended (exit code {self.proc.returncode}) while roles it forked ran; "
                  "each got SIGTERM (see logs/zygote.log)", file=sys.stderr, flush=True)  # fmt: skip

    def close(self, kill: bool = False) -> None:
        """No more forks: the zygote ends once its roles have (kill: now). When they all have, it is ended with
        SIGTERM rather than left to its interpreter's exit, which with torch loaded takes ~0.5 s of the run."""
        if kill and self.proc.poll() is None:
            self.proc.kill()
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self.drain()
        if self.proc.poll() is None and self.ready and all(pid in self.exits for pid in self.forked):
            self.proc.terminate()  # nothing of its own to flush; a role still alive would get SIGTERM too
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def _expect(self, key: str, timeout_s: float, check: Callable[[], None] | None = None) -> dict:
        """The next answer holding `key` (exit reports on the way are kept); raises ZygoteError on a timeout,
        an error answer or the zygote's end, and what check() raises (called every 0.1 s)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if check is not None:
                check()
            for msg in self._read(max(0.0, min(0.1, deadline - time.monotonic()))):
                if key in msg:
                    return msg
                if "error" in msg:
                    raise ZygoteError(msg["error"])
            if self.proc.poll() is not None:
                raise ZygoteError(f"the zygote ended (exit code {self.proc.returncode}); see logs/zygote.log")
            if time.monotonic() > deadline:
                raise ZygoteError(f"no answer from the zygote within {timeout_s:g}s")

    def _read(self, timeout_s: float) -> list[dict]:
        """Complete lines the zygote wrote, parsed; exit reports are also recorded in self.exits."""
        out = self.proc.stdout
        if out is None or out.closed:
            return []
        fd = out.fileno()
        while select.select([fd], [], [], timeout_s)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._buf += chunk
            timeout_s = 0.0
        *lines, self._buf = self._buf.split(b"\n")
        msgs = [msg for msg in map(_answer, lines) if msg is not None]
        for msg in msgs:
            if "exit" in msg:
                self.exits[int(msg["exit"])] = int(msg["rc"])
        return [m for m in msgs if "exit" not in m]


def _send(fd: int, data: bytes, timeout_s: float) -> None:
    """Write all of `data` to the zygote's stdin within timeout_s: a request larger than the pipe's buffer (a
    large environment) would block for good on a zygote that stopped reading (SIGSTOP). Raises ZygoteError."""
    deadline, view = time.monotonic() + timeout_s, memoryview(data)
    os.set_blocking(fd, False)
    while view:
        if not select.select([], [fd], [], max(0.0, deadline - time.monotonic()))[1]:
            raise ZygoteError(f"the zygote took no request within {timeout_s:g}s (stopped?)")
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            continue
        except OSError as err:  # BrokenPipeError: it is gone
            raise ZygoteError(f"the zygote is gone ({err})") from None


def _answer(line: bytes) -> dict | None:
    """One line from the zygote, parsed; None for what is no answer: text an import printed to stdout before the
    zygote moved its channel off it (main, _own_channel)."""
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


class ForkedProcess:
    """What the supervisor needs of a subprocess.Popen, for a role the zygote forked."""

    def __init__(self, zygote: Zygote, pid: int):
        self.zygote, self.pid = zygote, pid
        self.returncode: int | None = None
        self.orphaned = False  # it ended after the zygote died, which sent it SIGTERM: its own code is unknown
        try:  # what watches it once the zygote, its parent, is gone (psutil tells a reused pid apart)
            self._ps: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self._ps = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.zygote.drain()
            self.returncode = self.zygote.exits.get(self.pid)
            if self.returncode is None and self.zygote.proc.poll() is not None:
                self.zygote.drain()  # what it reported before it ended
                self.returncode = self.zygote.exits.get(self.pid)
                if self.returncode is None:
                    self.zygote.note_end()
                if self.returncode is None and not self._alive():
                    # it outlived the zygote (PDEATHSIG sent it SIGTERM) and has ended since: no one reports its
                    # code to the launcher, and a role the zygote's death ended is no role that finished
                    self.returncode, self.orphaned = -signal.SIGTERM, True
        return self.returncode

    def _alive(self) -> bool:
        """Whether the role still runs, once the zygote cannot report its end: a role that catches SIGTERM
        (the server, the workers) still writes its results, and the launcher must wait for it, not count it
        ended and leave it behind."""
        try:
            return self._ps is not None and self._ps.is_running() and self._ps.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode


# -- the zygote process ------------------------------------------------------------------------------------------


def main() -> None:
    import importlib

    out = _own_channel()
    for name in (*PRELOAD, *(dep for role in ROLES for dep in _top_imports(role))):
        importlib.import_module(name)
    _say(out, {"ready": os.getpid()})
    live: set[int] = set()
    open_input = True
    while open_input or live:
        if open_input and select.select([0], [], [], 0.05)[0]:
            line = sys.stdin.buffer.readline()
            if not line:
                open_input = False
            elif line.strip():
                _fork(out, json.loads(line), live)
        elif not open_input:
            time.sleep(0.05)
        _reap(out, live)


def _top_imports(module: str) -> list[str]:
    """The modules `module` imports at its top level (its source read, not run)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return []
    tree = ast.parse(Path(spec.origin).read_text())
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module != "__future__":
            names.append(node.module)
    return names


def _own_channel() -> int:
    """Move the launcher's channel off stdout onto a descriptor of its own, and point stdout at the zygote's
    log (its stderr): what an import, a sitecustomize or a .pth file prints, from Python or from C, then lands
    in logs/zygote.log instead of in the middle of the answers the launcher parses."""
    channel = os.dup(1)
    os.dup2(2, 1)
    return channel


def _say(out: int, msg: dict) -> None:
    os.write(out, json.dumps(msg).encode() + b"\n")


def _reap(out: int, live: set[int]) -> None:
    for pid in list(live):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            live.discard(pid)
            _say(out, {"exit": pid, "rc": os.waitstatus_to_exitcode(status)})


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def _fork(out: int, request: dict, live: set[int]) -> None:
    _flush_std()  # what the zygote printed, once in its log, not again in each role's
    try:
        pid = os.fork()
    except OSError as err:
        _say(out, {"error": f"cannot fork {request.get('name')}: {err}"})
        return
    if pid == 0:  # the role: it leaves through the interpreter's own exit (atexit handlers, finalizers, threads)
        os.close(out)
        raise SystemExit(_run_role(request, os.getppid()))
    live.add(pid)
    _say(out, {"pid": pid})


def _run_role(request: dict, zygote: int) -> int:
    """In the forked child: become `python -m module args` and run it; its exit code."""
    import runpy

    os.setsid()
    in_child = dies_with(zygote)
    assert in_child is not None  # the zygote runs on Linux only
    in_child()  # SIGTERM when the zygote dies; exits at once if it already has
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
    _redirect(Path(request["log"]))
    _title([sys.executable, "-m", request["module"], *request["args"]])
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = [request["module"], *request["args"]]
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as end:
        code = _exit_code(end.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    _flush_std()
    return code


def _title(cmd: list[str]) -> None:
    """Show the role in ps, top and psutil as the command a fresh interpreter would have run (otherwise every
    role reads `python -m launch.zygote`). Without setproctitle installed the title stays."""
    try:
        import setproctitle
    except ImportError:
        return
    # an argument that is no UTF-8 (a path's raw bytes, as sys.argv holds them) is shown with a replacement
    # character: the title is cosmetic, and must not end a role that a fresh interpreter would have run
    title = " ".join(cmd).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    with contextlib.suppress(Exception):
        setproctitle.setproctitle(title)


def _redirect(log: Path) -> None:
    """stdin from /dev/null (the zygote's is the launcher's pipe), stdout and stderr appended to the log,
    line-buffered as PYTHONUNBUFFERED would make them."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own descriptors, for its whole life
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    main()
