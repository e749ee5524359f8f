"""When a worker gets its reply: the stale-synchronous-parallel bound and the apply_every barrier.
Pure bookkeeping, no I/O: the server asks which replies may go out after each push.

SSP (Ho et al. 2013): each worker's clock counts its pushes; a worker more than `ssp` pushes ahead of the
slowest joined worker waits (its reply is held) until the slowest catches up, so at every moment
clock[i] - min(clock) <= ssp + 1 (the +1 is the push it is waiting on).
Barrier: with apply_every = k, replies are held until the k-th push has been applied as one step, so
with k = workers every worker computes on the same parameters: a synchronous parameter server.
"""

from __future__ import annotations


class ReplyGate:
    def __init__(self, ssp: int | None = None, barrier: bool = False):
        self.ssp = ssp
        self.barrier = barrier
        self.clock: dict[int, int] = {}
        self.held: list[int] = []  # ranks whose reply is held, in arrival order
        self._at_barrier: set[int] = set()

    def join(self, rank: int) -> None:
        self.clock.setdefault(rank, 0)

    def pushed(self, rank: int, stepped: bool) -> list[int]:
        """Rank's push was handled (stepped: it completed an optimizer step); the ranks to answer now."""
        self.clock[rank] = self.clock.get(rank, 0) + 1
        self.held.append(rank)
        if self.barrier:
            self._at_barrier.add(rank)
            if stepped:
                self._at_barrier.clear()
        return self._release()

    def _release(self) -> list[int]:
        slowest = min(self.clock.values(), default=0)
        out = [
            r
            for r in self.held
            if r not in self._at_barrier and (self.ssp is None or self.clock[r] - slowest <= self.ssp)
        ]
        self.held = [r for r in self.held if r not in out]
        return out

    def waiting(self) -> list[int]:
        return list(self.held)

    def leave(self, rank: int) -> None:
        """The rank left the run (evicted): nobody waits for its clock, nothing is held for it."""
        self.forget(rank)
        self.clock.pop(rank, None)

    def barrier_full(self, live: int) -> bool:
        """Whether every live rank is at the barrier (after one left, the others need not wait)."""
        return self.barrier and len(self._at_barrier) >= live > 0

    def release_barrier(self) -> list[int]:
        """The step completed without another push (a rank left): answer the ranks at the barrier."""
        self._at_barrier.clear()
        return self._release()

    def state(self) -> dict:
        return {"clock": {str(r): c for r, c in self.clock.items()}}

    def load_state(self, facts: dict) -> None:
        self.clock = {int(r): int(c) for r, c in facts["clock"].items()}

    def forget(self, rank: int) -> None:
        """The rank's connection was replaced (a rejoin): nothing is held for it any more."""
        self.held = [r for r in self.held if r != rank]
        self._at_barrier.discard(rank)

    def clear(self) -> None:
        """The run stopped: every held rank was told so."""
        self.held.clear()
        self._at_barrier.clear()
