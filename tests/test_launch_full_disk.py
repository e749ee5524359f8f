"""A full disk ends the launcher with one line per file it could not write, and its last line is the run's
own error, never a traceback of the launcher. On a real 64 KiB tmpfs where mounting is allowed (root),
with an injected OSError elsewhere."""

import contextlib
import errno
import re
import subprocess
import sys
from pathlib import Path

import pytest

from launch.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER_FRAMES = ("launch/__main__.py", "launch/run", "launch/sweep_run.py")  # run.py, runner.py: the launcher


@contextlib.contextmanager
def full_tmpfs(path: Path, size: str = "64k", fill: bool = False):
    """A tiny tmpfs at `path` (unmounted afterwards); fill=True leaves no byte free."""
    path.mkdir()
    try:
        mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        subprocess.run(mount, check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        detail = (getattr(err, "stderr", None) or b"").decode(errors="replace").strip()
        reason = f"cannot mount a tmpfs here ({detail or err})"
        print(reason)
        pytest.skip(reason)
    try:
        if fill:
            with contextlib.suppress(OSError), open(path / "filler", "wb") as f:
                f.write(b"\0" * (1 << 20))
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


def _launch(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launch", "configs/tiny.yaml", *overrides, "--run-dir", str(run_dir), "--quiet"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )


def _no_launcher_traceback(err: str) -> None:
    assert not any(frame in err for frame in LAUNCHER_FRAMES), err


def test_config_yaml_on_a_full_disk_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    real_write_text = Path.write_text

    def full(path, *args, **kwargs):
        if path.name == "config.yaml":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    assert main(["configs/tiny.yaml", "--run-dir", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.strip().endswith(f"could not write {tmp_path / 'run' / 'config.yaml'}: No space left on device")


def test_config_yaml_on_a_full_tmpfs_is_named_in_one_line(tmp_path):
    with full_tmpfs(tmp_path / "disk", fill=True) as disk:
        out = _launch(disk / "run")
    assert out.returncode == 1, out.stderr
    _no_launcher_traceback(out.stderr)
    assert f"could not write {disk / 'run' / 'config.yaml'}: No space left on device" in out.stderr


@pytest.mark.slow
def test_a_run_filling_the_disk_names_each_file_and_ends_with_its_own_error(tmp_path):
    with full_tmpfs(tmp_path / "disk") as disk:
        out = _launch(disk / "run")
    assert out.returncode == 1, out.stdout + out.stderr
    _no_launcher_traceback(out.stderr)
    named = re.findall(r"could not write (\S+): No space left on device", out.stderr)
    assert named and all(Path(p).is_relative_to(disk / "run") for p in named), out.stderr
    lines = out.stderr.splitlines()
    error = next(i for i, line in enumerate(lines) if line.startswith("error: run failed: "))
    assert not [line for line in lines[error:] if line.startswith("warning:")], out.stderr  # the error comes last
