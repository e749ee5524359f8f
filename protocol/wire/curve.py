"""CURVE keys and the ZAP gate: who may talk to the server at all (docs/security.md).

A key folder holds one key pair per role, as pyzmq's `zmq.auth.create_certificates` writes them:

    server.key  server.key_secret            the server's pair (workers need server.key)
    worker-<rank>.key  worker-<rank>.key_secret   one pair per rank (the server needs every worker-<rank>.key)

The server accepts a connection only from the public keys of worker-0 .. worker-(N-1); ZeroMQ's ZAP
handler decides during the handshake, before any message of the peer reaches the server's loop. The key
a connection authenticated with names its rank (the message's User-Id): the holder of worker-3's key can
join as rank 3 only. Secret key files must be readable by their owner alone (mode 0600).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

SERVER = "server"


class KeyFileError(ValueError):
    """A key file that is missing, unreadable, malformed or readable by others; the message names it."""


def worker_name(rank: int) -> str:
    return f"worker-{rank}"


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # z85, 40 bytes
    secret: bytes


@dataclass(frozen=True)
class ServerKeys:
    pair: KeyPair
    allow: dict[bytes, str]  # a worker's public key (z85) -> its name, worker-<rank>


@dataclass(frozen=True)
class WorkerKeys:
    pair: KeyPair
    server_public: bytes


def key_folder(keys: str, run_dir: Path | None) -> Path:
    """Where a run's keys are: server.keys, else the run folder's keys/ (where the launcher writes them)."""
    if keys:
        return Path(keys)
    if run_dir is None:
        raise KeyFileError("CURVE needs a key folder: set server.keys, or give the run folder (--run-dir)")
    return run_dir / "keys"


# -- key files ---------------------------------------------------------------------------------------
def create_keys(folder: Path, workers: int) -> list[Path]:
    """New key pairs for the server and worker-0 .. worker-(workers-1) in `folder` (made 0700 if new);
    secret files 0600. Existing pairs are kept. Returns the files written."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    written: list[Path] = []
    old = os.umask(0o077)  # no moment at which a secret file is readable by others
    try:
        for name in [SERVER, *(worker_name(r) for r in range(workers))]:
            if (folder / f"{name}.key_secret").exists():
                continue
            public, secret = zmq.auth.create_certificates(str(folder), name)
            os.chmod(public, 0o644)  # a public key may be read by anyone
            written += [Path(public), Path(secret)]
    finally:
        os.umask(old)
    return written


def create_pair(folder: Path, name: str) -> KeyPair:
    """One new key pair `name` in `folder` (made 0700 if new; the secret file 0600), replacing any."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    old = os.umask(0o077)
    try:
        public, _ = zmq.auth.create_certificates(str(folder), name)
        os.chmod(public, 0o644)
    finally:
        os.umask(old)
    return read_secret(folder, name)


def write_public(folder: Path, name: str, public: bytes) -> Path:
    """folder/name.key holding only `public` (z85), in the format zmq.auth reads; KeyFileError if malformed."""
    if not _is_z85_key(public):
        raise KeyFileError(f"the public key for {name} is not 40 z85 characters")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{name}.key"
    path.write_text(f'#   taups: the public key of {name}\nmetadata\ncurve\n    public-key = "{public.decode()}"\n')
    os.chmod(path, 0o644)
    return path


def read_secret(folder: Path, name: str) -> KeyPair:
    """`name`'s key pair from folder/name.key_secret, refused when missing, unreadable or readable by others."""
    path = folder / f"{name}.key_secret"
    _check_private(path)
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key")
    return KeyPair(public, secret)


def read_public(folder: Path, name: str) -> bytes:
    public, _ = _load(folder / f"{name}.key")
    return public


def server_keys(folder: Path, workers: int) -> ServerKeys:
    """The server's pair and the public keys of worker-0 .. worker-(workers-1); KeyFileError names a bad file."""
    _check_folder(folder)
    pair = read_secret(folder, SERVER)
    allow: dict[bytes, str] = {}
    for r in range(workers):
        public = read_public(folder, worker_name(r))
        other = allow.get(public, SERVER if public == pair.public else None)
        if other is not None:  # one key for two names: its holder could join as either rank, the other as none
            raise KeyFileError(
                f"{folder / (worker_name(r) + '.key')} holds the same public key as {folder / (other + '.key')}: "
                "every rank needs a pair of its own"
            )
        allow[public] = worker_name(r)
    return ServerKeys(pair, allow)


def worker_keys(folder: Path, rank: int) -> WorkerKeys:
    _check_folder(folder)
    return WorkerKeys(read_secret(folder, worker_name(rank)), read_public(folder, SERVER))


def _check_folder(folder: Path) -> None:
    """A key folder that others may write to is refused: they could put their own public key in place of a
    worker's (the server would admit them) or of the server's (a worker would talk to them)."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return  # a missing folder: the key file's own check names the file
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KeyFileError(
            f"{folder} is writable by others (mode {stat.S_IMODE(mode):04o}), who could replace its public keys: "
            f"chmod 700 {folder}"
        )


def _check_private(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"{path} is missing (python -m launch.keys create {path.parent} makes one)") from None
    except OSError as err:
        raise KeyFileError(f"{path} cannot be read: {err.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}): chmod 600 {path}")


def _load(path: Path) -> tuple[bytes, bytes | None]:
    if not path.exists():
        raise KeyFileError(f"{path} is missing (python -m launch.keys create {path.parent} makes one)")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except FileNotFoundError:
        raise KeyFileError(f"{path} is missing (python -m launch.keys create {path.parent} makes one)") from None
    except OSError as err:
        raise KeyFileError(f"{path} cannot be read: {err.strerror or err}") from None
    except ValueError as err:  # pyzmq: "No public key found in ..."
        raise KeyFileError(f"{path} is not a key file: {err}") from None
    if not _is_z85_key(public) or (secret is not None and not _is_z85_key(secret)):
        raise KeyFileError(f"{path} is not a key file: a CURVE key is 40 z85 characters")
    return public, secret


def _is_z85_key(key: bytes) -> bool:
    try:
        return len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


# -- the server's gate -------------------------------------------------------------------------------
class Gatekeeper(ThreadAuthenticator):
    """pyzmq's ZAP handler (a thread of its own, on the server's context) with the server's allowlist: an
    allowed key's connection carries the key's name as the User-Id of its messages. Denied handshakes are
    counted by the server's socket monitor (Channel.handshake_failures), which sees the other kinds too."""

    def __init__(self, context: zmq.Context, allow: dict[bytes, str]):
        super().__init__(context)
        self.names = dict(allow)

    def start(self) -> None:
        super().start()
        self.configure_curve_callback("*", credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by the ZAP handler for each CURVE handshake with the client's public key (z85)."""
        return key in self.names

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.names.get(z85.encode(client_public_key), "")
