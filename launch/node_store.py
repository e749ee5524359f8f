"""What the processes of a torchrun-placed run tell each other, through the c10d store torchrun runs.

Keys live under taups/<TORCHELASTIC_RUN_ID>/ so that nothing of torchrun's own rendezvous is touched:
    key/<rank>      a worker's CURVE public key (z85), made on its host
    start           the head's JSON: endpoint (with server.shards, every shard's, space-separated, in shard
                    order), server public key ("" without CURVE), resolved config, run id
    report/<rank>   a worker's report (worker-<rank>.json), "" when it wrote none
    failed/<RANK>   why the slot of global RANK failed (bad config on that host, its worker exited non-zero):
                    the others end on it at once instead of waiting out their timeouts for a peer that is gone
The store has no authentication: whoever reaches MASTER_ADDR:MASTER_PORT could read or replace these, as
it could torchrun's own rendezvous. Public keys and an endpoint are no secrets; the secret keys never travel.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

POLL_S = 0.2
StoreError = dist.DistError  # the store cannot be reached any more (its host's torchrun ended, say)


class PeerFailed(RuntimeError):
    """Another slot of the run published that it failed (failed/<RANK>); the message names it."""


def slot_name(rank: int) -> str:
    """Global RANK as the user knows it: the head, or worker RANK - 1."""
    return "the head (RANK 0)" if rank == 0 else f"worker {rank - 1} (RANK {rank})"


@dataclass(frozen=True)
class Start:
    endpoint: str
    server_public: str
    config: str  # the head's resolved config.yaml
    run_id: str


class NodeStore:
    def __init__(self, store: dist.Store):
        self.store = store

    @classmethod
    def connect(cls, env: dict[str, str], timeout_s: float) -> NodeStore:
        """A client of the store at MASTER_ADDR:MASTER_PORT. Raises TimeoutError when it cannot be reached."""
        try:
            tcp = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False,
                                timeout=timedelta(seconds=timeout_s))  # fmt: skip
        except (RuntimeError, ValueError) as err:
            raise TimeoutError(
                f"the store at {env['MASTER_ADDR']}:{env['MASTER_PORT']} cannot be reached: {err}"
            ) from None
        prefix = f"taups/{env.get('TORCHELASTIC_RUN_ID') or 'run'}/"
        return cls(dist.PrefixStore(prefix, tcp))

    def publish_key(self, rank: int, public: bytes) -> None:
        self.store.set(f"key/{rank}", public.decode("ascii"))  # z85 is ASCII: the store holds the same bytes

    def public_keys(self, workers: int, timeout_s: float) -> dict[int, bytes]:
        names = [f"key/{r}" for r in range(workers)]
        labels = {name: slot_name(r + 1) for r, name in enumerate(names)}
        self._wait(names, timeout_s, "every worker's public key", range(1, workers + 1), labels)
        return {r: self.store.get(name) for r, name in enumerate(names)}

    def publish_failure(self, rank: int, message: str) -> None:
        self.store.set(f"failed/{rank}", message)

    def failures(self, ranks: range) -> dict[int, str]:
        """The published failures of these global ranks."""
        names = {r: f"failed/{r}" for r in ranks}
        return {r: self.store.get(n).decode() for r, n in names.items() if self.store.check([n])}

    def raise_failures(self, ranks: range) -> None:
        """PeerFailed naming the first of these ranks that published a failure."""
        for rank, message in sorted(self.failures(ranks).items())[:1]:
            raise PeerFailed(f"{slot_name(rank)} failed: {message}")

    def publish_start(self, endpoint: str, server_public: str, config: str, run_id: str) -> None:
        start = {"endpoint": endpoint, "server_public": server_public, "config": config, "run_id": run_id}
        self.store.set("start", json.dumps(start))

    def start(self, timeout_s: float) -> Start:
        self._wait(["start"], timeout_s, "the head's server", range(1))
        return Start(**json.loads(self.store.get("start")))

    def publish_report(self, rank: int, report: str) -> None:
        self.store.set(f"report/{rank}", report)

    def reports(self, workers: int, timeout_s: float, check: Callable[[], None]) -> dict[int, str]:
        """The reports that arrive within timeout_s (`check` runs between polls: a stop signal acts)."""
        deadline, names = time.monotonic() + timeout_s, [f"report/{r}" for r in range(workers)]
        while not self.store.check(names) and time.monotonic() < deadline:
            check()
            time.sleep(POLL_S)
        found = {r: self.store.get(n).decode() for r, n in enumerate(names) if self.store.check([n])}
        return {r: text for r, text in found.items() if text}

    def _wait(
        self, names: list[str], timeout_s: float, what: str, peers: range, labels: dict[str, str] | None = None
    ) -> None:
        """Poll until every name is set; PeerFailed as soon as one of `peers` (global ranks) published a failure,
        StoreError (not a timeout) when the store is gone, TimeoutError naming what is missing."""
        deadline = time.monotonic() + timeout_s
        while not self.store.check(names):
            self.raise_failures(peers)
            if time.monotonic() >= deadline:
                missing = [(labels or {}).get(n, n) for n in names if not self.store.check([n])]
                absent = f" (none from {', '.join(missing)})" if missing and len(names) > 1 else ""
                raise TimeoutError(f"waited {timeout_s:g}s for {what} in torchrun's store{absent}")
            time.sleep(POLL_S)
