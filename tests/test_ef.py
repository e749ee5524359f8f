"""Error feedback: the worker half (worker/ef.py) against the server half (ps/aggregate.py), with the
real optimizer, on deterministic and stochastic problems (docs/algorithms.md, Test oracles 4-6 and 8)."""

import math

import pytest
import torch

from protocol.config.schema import CompressionConfig, OptimizerConfig
from protocol.wire.layout import Layout
from protocol.wire.messages import Push
from ps.aggregate import make_aggregator
from ps.optim import make_optimizer
from worker.compressors import make_compressor
from worker.ef import make_uplink


class Cluster:
    """n workers and one server in one process, exchanging real payloads, one synchronous round at a time
    (the EF21 papers' schedule): every worker pushes at the same x, then the server steps once."""

    def __init__(self, method, compressor, n, d, lr, opt="sgd", momentum=0.0, ratio=None, k=0, eta=0.1, seed=0):
        self.cfg = CompressionConfig(
            method=method, compressor=compressor, k=k, ratio=ratio or 0.01, eta=eta, resync_every=50
        )
        layout = Layout.from_shapes([("x", (d,))])
        self.uplinks = [
            make_uplink(
                self.cfg,
                d,
                make_compressor(self.cfg, layout, seed + i) if method != "none" else None,
                torch.device("cpu"),
            )
            for i in range(n)
        ]
        self.agg = make_aggregator(self.cfg.ef21, d, self.cfg.resync_every)
        self.x = torch.zeros(d)
        self.opt = make_optimizer(self.x, OptimizerConfig(name=opt, lr=lr, momentum=momentum))
        self.lr = lr
        self.seq = [0] * n

    def push(self, rank, grad):
        kind, p = self.uplinks[rank].prepare(grad)
        msg = Push(
            rank=rank,
            seq=self.seq[rank],
            base_version=0,
            kind=kind,
            encoding=p.encoding,
            numel=p.numel,
            loss=0.0,
            samples=1,
            meta=p.meta,
            values=p.values,
            indices=p.indices,
            signs=p.signs,
        )
        self.seq[rank] += 1
        direction = self.agg.apply(rank, self.agg.stage(msg))
        self.uplinks[rank].commit(True)
        return direction

    def round(self, grads):
        if self.cfg.ef21:  # the server's g is the mean of the g_i once every worker pushed
            for rank, g in enumerate(grads):
                direction = self.push(rank, g)
            self.opt.step(direction, self.lr)
        else:  # direct uplink: each push is a direction of its own; average the round's pushes
            total = torch.zeros_like(self.x)
            for rank, g in enumerate(grads):
                total += self.push(rank, g)
            self.opt.step(total / len(grads), self.lr)


def quadratics(n=4, d=10, seed=0):
    """Heterogeneous strongly convex f_i(x) = 1/2 x'A_i x - b_i'x; returns grad_i, full grad, L, L_tilde."""
    g = torch.Generator().manual_seed(seed)
    As, bs = [], []
    for _ in range(n):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        eig = torch.linspace(1.0, 4.0, d, dtype=torch.float64) * (0.5 + torch.rand(1, generator=g, dtype=torch.float64))
        As.append(q @ torch.diag(eig) @ q.T)
        bs.append(torch.randn(d, generator=g, dtype=torch.float64) * 3)
    A = sum(As) / n
    L = float(torch.linalg.eigvalsh(A).max())
    L_tilde = math.sqrt(sum(float(torch.linalg.eigvalsh(a).max()) ** 2 for a in As) / n)
    grad_i = [lambda x, a=a, b=b: (a @ x.double() - b).float() for a, b in zip(As, bs)]
    full = lambda x: sum(gi(x).double() for gi in grad_i) / n
    return grad_i, full, L, L_tilde


def ef21_step(L, L_tilde, alpha):
    theta = 1 - math.sqrt(1 - alpha)
    beta = (1 - alpha) / theta
    return 1 / (L + L_tilde * math.sqrt(beta / theta))


def test_ef21_top1_drives_the_gradient_norm_to_zero_where_naive_stalls():
    d, n = 10, 4
    grad_i, full, L, L_tilde = quadratics(n, d)
    gamma = ef21_step(L, L_tilde, 1 / d)
    norms = {}
    for method in ("ef21", "naive"):
        c = Cluster(method, "topk", n, d, gamma, k=1)
        for _ in range(1500):  # EF21 reaches float precision (~2e-11) by about round 1000
            c.round([gi(c.x) for gi in grad_i])
        norms[method] = float(full(c.x).norm()) ** 2
    assert norms["ef21"] < 1e-8, norms  # linear convergence (PL) to float precision
    assert norms["naive"] > 1e-3, norms  # biased compression without feedback stalls away from the optimum


def _stochastic(d, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = [torch.randn(d, generator=g) for _ in range(n)]
    return lambda rank, x: x - targets[rank] + 0.3 * torch.randn(d, generator=g)


@pytest.mark.parametrize("method", ["ef21", "ef14", "ef21-sgdm", "ef21-sgd2m"])
def test_identity_compression_gives_uncompressed_iterates(method):
    d, n, steps, lr = 30, 3, 200, 0.1
    runs = {}
    for m in (method, "none"):
        grad = _stochastic(d, n)
        c = Cluster(m, "identity", n, d, lr, eta=1.0 if method in ("ef21-sgdm", "ef21-sgd2m") else 0.1)
        for _ in range(steps):
            c.round([grad(r, c.x) for r in range(n)])
        runs[m] = c.x.clone()
    # identity is exact, but g_i + (grad - g_i) may differ from grad by an ulp: float tolerance
    torch.testing.assert_close(runs[method], runs["none"], rtol=1e-5, atol=1e-5)


def test_ef21_sgdm_with_eta_1_is_exactly_ef21():
    d, n = 50, 3
    xs = {}
    for method in ("ef21", "ef21-sgdm"):
        grad = _stochastic(d, n)
        c = Cluster(method, "topk", n, d, 0.05, k=5, eta=1.0)
        for _ in range(300):
            c.round([grad(r, c.x) for r in range(n)])
        xs[method] = c.x.clone()
    assert torch.equal(xs["ef21"], xs["ef21-sgdm"])


def test_ef21_sgdm_identity_one_worker_is_torch_sgd_with_dampened_momentum():
    d, eta, lr = 20, 0.2, 0.05
    grad = _stochastic(d, 1, seed=3)
    c = Cluster("ef21-sgdm", "identity", 1, d, lr, eta=eta)
    ref = torch.zeros(d, requires_grad=True)
    opt = torch.optim.SGD([ref], lr=lr, momentum=1 - eta, dampening=1 - eta)
    for _ in range(200):
        g = grad(0, c.x)
        c.round([g])
        ref.grad = g.clone()
        opt.step()
    torch.testing.assert_close(c.x, ref.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("values", ["float32", "bfloat16"])
def test_server_g_equals_mean_of_worker_g_i_over_thousands_of_compressed_pushes(values):
    d, n = 400, 4
    cfg = CompressionConfig(method="ef21-sgdm", compressor="topk", ratio=0.02, values=values, resync_every=100000)
    layout = Layout.from_shapes([("x", (d,))])
    ups = [make_uplink(cfg, d, make_compressor(cfg, layout, r), torch.device("cpu")) for r in range(n)]
    agg = make_aggregator(True, d, cfg.resync_every)
    grad = _stochastic(d, n, seed=1)
    x = torch.zeros(d)
    worst = 0.0
    for step in range(3000):
        rank = step % n if step % 7 else (step * 3) % n  # not a fixed order
        kind, p = ups[rank].prepare(grad(rank, x))
        push = Push(
            rank=rank,
            seq=step,
            base_version=0,
            kind=kind,
            encoding=p.encoding,
            numel=d,
            loss=0.0,
            samples=1,
            meta=p.meta,
            values=p.values,
            indices=p.indices,
            signs=p.signs,
        )
        x -= 0.01 * agg.apply(rank, agg.stage(push))
        ups[rank].commit(True)
        if len(agg.g_i) == n:
            mean = sum(u.g for u in ups) / n
            worst = max(worst, float((agg.g - mean).norm() / mean.norm()))
            for r in range(n):  # each worker's g_i is mirrored bit for bit: same decoded values, same adds
                assert torch.equal(agg.g_i[r], ups[r].g), (step, r)
    assert worst < 1e-5, worst


def test_refused_push_changes_neither_side():
    d = 100
    cfg = CompressionConfig(method="ef21", compressor="topk", ratio=0.05)
    up = make_uplink(cfg, d, make_compressor(cfg, Layout.from_shapes([("x", (d,))]), 0), torch.device("cpu"))
    up.prepare(torch.ones(d))
    up.commit(True)  # the dense reset
    before = up.g.clone()
    up.prepare(torch.randn(d))
    up.commit(False)  # e.g. dropped as too stale
    assert torch.equal(up.g, before)
    up.resync()
    kind, p = up.prepare(torch.randn(d))
    assert kind == "reset" and p.encoding == "dense"


@pytest.mark.parametrize("values,compressor", [("float32", "topk"), ("bfloat16", "topk"), ("float32", "natural")])
def test_moving_g_i_when_the_push_is_sent_changes_nothing_bit_for_bit(values, compressor):
    """uplink.sent() adds a sparse delta to g_i while the server works on it; every verdict (applied, refused,
    per-shard parts, none before the next prepare, a resync) leaves g_i and the payloads exactly as without it."""
    d = 5000
    cfg = CompressionConfig(method="ef21-sgdm", compressor=compressor, ratio=0.02, values=values, eta=0.3)
    layout = Layout.from_shapes([("x", (d,))])
    early, plain = (make_uplink(cfg, d, make_compressor(cfg, layout, 7), torch.device("cpu")) for _ in range(2))
    gen = torch.Generator().manual_seed(9)
    parts = [[(0, 1000, True), (1000, 4000, False), (4000, d, True)], [(0, 2500, False), (2500, d, True)]]
    moved = 0
    for step in range(400):
        grad = torch.randn(d, generator=gen) * 10 ** float(torch.rand(1, generator=gen) * 4 - 2)
        (k1, p1), (k2, p2) = early.prepare(grad), plain.prepare(grad)
        assert k1 == k2 and torch.equal(p1.values, p2.values), step
        assert (p1.indices is None and p2.indices is None) or torch.equal(p1.indices, p2.indices), step
        early.sent()
        moved += not torch.equal(early.g, plain.g)  # a sparse delta is in g_i already
        verdict = int(torch.randint(0, 6, (1,), generator=gen))
        for up in (early, plain):
            if verdict in (0, 1, 2):
                up.commit(True)
            elif verdict == 3:
                up.commit(False)
            elif verdict == 4:
                up.commit_parts(parts[step % 2])
            # verdict 5: no answer before the next prepare (the push counts as not applied)
            if verdict == 3 and step % 5 == 0:
                up.resync()
        if verdict != 5:  # (with no verdict yet, early.g holds the sent push until the next prepare)
            assert torch.equal(early.g, plain.g), (step, verdict)
    early.prepare(grad)
    plain.prepare(grad)
    assert torch.equal(early.g, plain.g)
    assert moved > 200 if compressor == "topk" else moved == 0  # natural's dense deltas wait for commit


def test_ef14_keeps_a_refused_push_in_its_residual():
    d = 50
    cfg = CompressionConfig(method="ef14", compressor="topk", k=5)
    up = make_uplink(cfg, d, make_compressor(cfg, Layout.from_shapes([("x", (d,))]), 0), torch.device("cpu"))
    g = torch.randn(d)
    up.prepare(g)
    up.commit(False)
    assert torch.equal(up.e, g)  # nothing was applied, so all of it waits for the next push
    up.prepare(torch.zeros(d))
    up.commit(True)
    assert int((up.e != 0).sum()) == d - 5  # the top 5 went out, the rest stays


def test_direct_decode_scratch_rezeroes_only_what_the_last_sparse_push_wrote():
    from protocol.errors import ProtocolError
    from protocol.wire.encoding import decode_into, encode_dense, encode_qsgd, encode_sparse
    from ps.aggregate import DecodeScratch

    d = 1000
    gen = torch.Generator().manual_seed(0)
    sparse = lambda k: encode_sparse(torch.randperm(d, generator=gen)[:k].sort().values, torch.randn(k), d)
    bad = encode_sparse(torch.tensor([3, 5]), torch.tensor([1.0, float("nan")]), d)
    scratch = DecodeScratch(d)
    payloads = [
        sparse(10),
        sparse(50),
        encode_dense(torch.randn(d), "bfloat16"),
        sparse(5),
        bad,
        sparse(7),
        encode_qsgd(torch.randint(-4, 5, (d,)), 2.0, 4),
        sparse(3),
        encode_dense(torch.randn(d)),
        sparse(1),
    ]
    for p in payloads:
        try:
            got = scratch.decode(p).clone()
        except ProtocolError:
            assert p is bad
            continue
        assert torch.equal(got, decode_into(p, d, torch.zeros(d))), p.encoding  # as if decoded into zeros


def test_ef21_server_adds_g_i_after_the_reply_with_the_same_bits():
    """A sparse delta's add into g_i waits for settle() (after the reply); nothing that reads g_i can see it
    missing (g_i, state, recompute, the next push), and receive buffers reused before settle change nothing."""
    from protocol.wire.encoding import encode_dense, encode_sparse

    d, n = 2000, 3
    gen = torch.Generator().manual_seed(5)
    agg, ref = make_aggregator(True, d, 7), {r: torch.zeros(d) for r in range(n)}

    def push(rank, seq, kind, p):
        return Push(rank, seq, 0, kind, p.encoding, d, 0.0, 1, p.meta, p.values, p.indices, p.signs)

    for r in range(n):
        g = torch.randn(d, generator=gen)
        agg.apply(r, agg.stage(push(r, 0, "reset", encode_dense(g))))
        ref[r].copy_(g)
    for seq in range(1, 60):
        r, k = seq % n, int(torch.randint(1, 200, (1,), generator=gen))
        idx, vals = torch.randperm(d, generator=gen)[:k].sort().values, torch.randn(k, generator=gen)
        p = encode_sparse(idx, vals, d, "float32", "int64")
        agg.apply(r, agg.stage(push(r, seq, "delta", p)))
        ref[r].index_add_(0, idx, vals)
        p.values.fill_(float("nan"))  # the receive buffers reused by the next message, before any settle
        p.indices.zero_()
        if seq % 3 == 0:
            agg.settle()
        if seq % 4 == 0:
            tensors, _ = agg.state()
            assert torch.equal(tensors[f"g_i/{r}"], ref[r]), seq
        if seq % 5 == 0:
            assert all(torch.equal(agg.g_i[q], ref[q]) for q in range(n)), seq
    agg.recompute()
    torch.testing.assert_close(agg.g, sum(ref.values()) / n, rtol=0, atol=1e-6)
