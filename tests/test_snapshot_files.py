"""Snapshot files (protocol/runfolder/snapshot.py): two writers of one path (the snapshot thread and the end)
each write their own temporary file, so neither renames the other's half-written one into place; and a file
that fails to map reads as ValueError naming it (the evaluator then skips it), never as another exception.
A CI run once had the evaluator die on a latest.safetensors that shrank under it ("smaller than the required
mapping size", a RuntimeError from safetensors)."""

from __future__ import annotations

import threading

import pytest
import torch

from protocol.runfolder import snapshot
from protocol.runfolder.snapshot import read_snapshot, write_snapshot


def test_two_writers_of_one_path_write_separate_temporary_files(tmp_path, monkeypatch):
    path, names, both_in = tmp_path / "latest.safetensors", [], threading.Barrier(2, timeout=10)
    real = snapshot.save_file

    def save_file(tensors, filename, metadata=None):
        names.append(filename)
        both_in.wait()  # both writers hold their temporary file at once
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(snapshot, "save_file", save_file)
    writers = [threading.Thread(target=write_snapshot, args=(path, torch.full((64,), v), {"version": v}))
               for v in (1, 2)]  # fmt: skip
    for t in writers:
        t.start()
    for t in writers:
        t.join(30)
    assert len(set(names)) == 2, names
    snap = read_snapshot(path)
    assert torch.all(snap.params == snap.meta["version"]) and not list(tmp_path.glob("*.tmp"))


def test_a_file_that_cannot_be_mapped_is_a_value_error_naming_it(tmp_path, monkeypatch):
    path = tmp_path / "latest.safetensors"
    write_snapshot(path, torch.ones(650), {"version": 1})

    def shrunk(*args, **kwargs):
        raise RuntimeError(f"file <{path}> size <2864> is smaller than the required mapping size <2872>")

    monkeypatch.setattr(snapshot, "safe_open", shrunk)
    with pytest.raises(ValueError, match="latest.safetensors"):
        read_snapshot(path)
