"""The launcher's own writes into the run folder, with an OSError (a full disk, a read-only or vanished
folder) turned into one line that names the file, instead of a traceback that would hide the run's outcome."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from protocol.runfolder.records import write_record


class WriteError(Exception):
    """A file of the run folder could not be written; str() names the file and the reason."""

    def __init__(self, path: Path | str, err: OSError):
        self.path = Path(path)
        reason = err.strerror or str(err) or type(err).__name__
        super().__init__(f"could not write {self.path}: {reason}")


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn an OSError raised inside the block into a WriteError naming `path`."""
    try:
        yield
    except OSError as err:
        raise WriteError(path, err) from err


def write_text(path: Path, text: str) -> None:
    with writing(path):
        path.write_text(text)


def write_record_file(path: Path, record: Any) -> None:
    with writing(path):
        write_record(path, record)
