"""The experiment schema: the typed contract every process reads (server, workers, launcher).

Frozen dataclasses, one per config section; each `check()` refuses bad values with a ConfigError naming
the key. The choices it names are implemented in ps/ and worker/ (a test checks the two lists agree).
Each field's comment is its documentation: docs/config.md is generated from them
(`python -m protocol.config.reference --write`; a test fails when it is stale).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from protocol.errors import ConfigError
from protocol.wire.endpoints import is_local, shard_endpoint, uses_curve

# Every choice list is written once, as a Literal; the tuples are derived from it.
DatasetName = Literal["digits", "synthetic", "mnist", "fashion_mnist", "libsvm"]
ModelName = Literal["logreg", "mlp", "cnn"]
OptimizerName = Literal["amsgrad", "adam", "sgd"]
MethodName = Literal["none", "naive", "ef14", "ef21", "ef21-sgdm", "ef21-sgd2m"]
CompressorName = Literal["identity", "topk", "randk", "natural", "qsgd", "sign"]
DATASETS: tuple[str, ...] = typing.get_args(DatasetName)
MODELS: tuple[str, ...] = typing.get_args(ModelName)
OPTIMIZERS: tuple[str, ...] = typing.get_args(OptimizerName)
METHODS: tuple[str, ...] = typing.get_args(MethodName)
COMPRESSORS: tuple[str, ...] = typing.get_args(CompressorName)
EF21_METHODS = ("ef21", "ef21-sgdm", "ef21-sgd2m")
FILE_DATASETS = ("mnist", "fashion_mnist", "libsvm")  # read from local files named by task.path
IMAGE_DATASETS = ("digits", "mnist", "fashion_mnist")  # a cnn needs images
# where a data set is found when task.path is empty: Debian's dataset-fashion-mnist package
DEFAULT_PATHS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}

# Bounds where a value reaches a consumer narrower than the builder's 64-bit ints and finite floats:
MAX_SEED = 2**63 - 1  # torch.manual_seed takes [-2^63, 2^64), numpy's SeedSequence and default_rng only >= 0
MAX_WAIT_S = (2**31 - 1) / 1000  # ZeroMQ timeouts and zmq_poll take milliseconds in a C int: 24.8 days
FLOAT32_MAX = 3.4028234663852886e38  # values that enter float32 arithmetic must not become inf there
FLOAT32_TINY = 1.1754943508222875e-38  # float32's smallest normal; a smaller eps is 0 (or flushed) in float32
MAX_ELEMENTS = 1 << 28  # one dense float32 array of data or of a layer's width: 1 GiB
MAX_THREADS = 1024  # torch.set_num_threads takes a C int; OpenMP would start that many threads
MAX_CUDA_INDEX = 127  # torch keeps a device index in an int8: cuda:128 reads as cuda:-128
MAX_FACTOR = 1000  # worker.slowdown and worker.jitter: keeps the simulated sleep finite for time.sleep
MAX_SHARDS = 64  # server processes: each is a full interpreter with its own socket and loop
IPC_PATH_BYTES = 107  # sun_path of a Unix socket holds 108 bytes, the terminating NUL included
MAX_NAME = 200  # the run folder adds -sweep, -YYYYmmdd-HHMMSS and a counter within a 255-byte file name


def require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


@dataclass(frozen=True)
class SyntheticConfig:
    # logistic: classification (softmax); lstsq: least squares; quadratic: f(x) = 1/2 ||x - x*||^2 on the
    # parameter vector x itself (no data: the noisy quadratic of R3 in docs/algorithms.md)
    kind: Literal["logistic", "lstsq", "quadratic"] = "logistic"
    dim: int = 100  # input features (quadratic: the dimension of x)
    samples: int = 4000  # train + test samples, generated from data_seed (quadratic: unused)
    classes: int = 2  # logistic only
    # logistic: label flip rate; lstsq: target noise std; quadratic: gradient noise std sigma (per coordinate,
    # divided by sqrt(task.batch_size); batch_size 0 gives the exact gradient)
    noise: float = 0.1
    data_seed: int = 0  # the data set stays fixed when the experiment seed changes (quadratic: draws x*)
    optimum_scale: float = 0.0  # quadratic: x* = optimum_scale * N(0, I) from data_seed (0: x* = 0)
    init_scale: float = 1.0  # quadratic: x^0 = x* + init_scale * N(0, I) / sqrt(dim) from seed (0: start at x*)

    def check(self) -> None:
        require(self.dim >= 1, "dim", "must be >= 1")
        require(self.dim <= MAX_ELEMENTS, "dim", "must be <= 2^28 (1 GiB of float32)")
        require(self.samples >= 10, "samples", "must be >= 10")
        require(
            self.kind == "quadratic" or self.samples * self.dim <= MAX_ELEMENTS,
            "samples",
            "samples * dim must be <= 2^28 floats (1 GiB)",
        )
        require(0 <= self.optimum_scale <= 1e36, "optimum_scale", "must be in [0, 1e36] (x* must be finite in float32)")
        require(
            0 <= self.init_scale <= 1e18, "init_scale", "must be in [0, 1e18] (the loss ~ init_scale^2 / 2 in float32)"
        )
        require(self.classes >= 2, "classes", "must be >= 2")
        require(
            self.kind != "logistic" or self.dim * self.classes <= MAX_ELEMENTS,
            "classes",
            "dim * classes must be <= 2^28 floats (the teacher matrix that labels the data)",
        )
        require(self.noise >= 0, "noise", "must be >= 0")
        require(self.kind != "logistic" or self.noise <= 1, "noise", "is a label flip rate for logistic: at most 1")
        require(self.noise <= 1e18, "noise", "must be <= 1e18 (its square enters float32 losses)")
        require(0 <= self.data_seed <= MAX_SEED, "data_seed", "must be in [0, 2^63 - 1] (torch and numpy seeds)")


@dataclass(frozen=True)
class TaskConfig:
    # your own task: "package.module:function" or "path/to/file.py:function", called with this task section and
    # returning a worker.tasks.api.TaskSpec (model, data, loss; see docs/tasks.md). Empty: the built-in task of
    # task.dataset, task.model and the keys below
    factory: str = ""
    # free-form settings passed to the factory (task.args), recorded in config.yaml with the rest
    args: dict[str, Any] = field(default_factory=dict)
    # DataLoader worker processes per rank for the training data (0: load in the training process)
    loader_workers: int = 0
    # built-in data sets: digits (scikit-learn's bundled 8x8 digits), synthetic (generated, task.synthetic),
    # mnist and fashion_mnist (local IDX files; fashion_mnist defaults to Debian's dataset-fashion-mnist
    # package in /usr/share/datasets/fashion-mnist), libsvm (a local text file)
    dataset: DatasetName = "digits"
    # logreg: one linear layer; mlp: ReLU layers of task.hidden widths; cnn: 3x3 convs of task.channels (images only)
    model: ModelName = "mlp"
    hidden: tuple[int, ...] = (128,)  # mlp hidden widths
    channels: tuple[int, ...] = (16, 32)  # cnn conv channels (3x3 convs; task.pool, batch_norm and head shape the rest)
    # cnn: where the 2x2 max-pools go. last: one after the last conv; each: one after every conv (each conv then
    # runs at half the previous resolution, so later convs and the linear layer cost less)
    pool: Literal["last", "each"] = "last"
    # cnn: BatchNorm after every conv (its running statistics travel with pushes, worker.buffers_every); the convs
    # then have no bias, which BatchNorm's shift would make redundant
    batch_norm: bool = False
    head: tuple[int, ...] = ()  # cnn: widths of ReLU linear layers between the convs and the output layer
    # cnn: dropout probability on the input of every linear layer (the flattened conv features, each head layer's
    # output) while training; evaluations see the whole network
    dropout: float = 0.0
    # cnn: random changes to every training image (a parameter-free first layer, off in evaluations): flip
    # mirrors half the images left-right; flip_shift also moves each by up to 2 pixels each way
    augment: Literal["none", "flip", "flip_shift"] = "none"
    batch_size: int = 32  # per worker per push; 0 = the worker's whole local data (full gradient)
    sampling: Literal["random", "shard"] = "random"  # random minibatches from all data, or own shard
    test_fraction: float = 0.2  # share of samples held out for testing (not mnist, nor libsvm with a test_path)
    regularizer: Literal["none", "l2", "nonconvex"] = "none"  # nonconvex: lambda * sum x^2 / (1 + x^2)
    reg_lambda: float = 0.0  # lambda, the regularizer's weight
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # generated data (dataset synthetic)
    # mnist, fashion_mnist: folder of the four IDX files (.gz or not); libsvm: the training file
    path: str = ""
    test_path: str = ""  # libsvm: test file (same labels); empty = hold out test_fraction of path
    features: int = 0  # libsvm: number of features; 0 = the largest index in the files

    def check(self) -> None:
        require(self.batch_size >= 0, "batch_size", "must be >= 0 (0 = full local data)")
        require(all(1 <= h <= MAX_ELEMENTS for h in self.hidden), "hidden", "widths must be in [1, 2^28]")
        require(
            all(1 <= c <= MAX_ELEMENTS for c in self.channels) and bool(self.channels),
            "channels",
            "must be in [1, 2^28]",
        )
        require(all(1 <= h <= MAX_ELEMENTS for h in self.head), "head", "widths must be in [1, 2^28]")
        require(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        require(self.augment == "none" or self.model == "cnn", "augment", "applies to task.model cnn only")
        require(0 < self.test_fraction < 1, "test_fraction", "must be in (0, 1)")
        require(0 <= self.reg_lambda <= FLOAT32_MAX, "reg_lambda", "must be in [0, 3.4e38] (float32)")
        require(
            self.model != "cnn" or self.dataset in IMAGE_DATASETS,
            "model",
            f"cnn needs an image data set ({', '.join(IMAGE_DATASETS)})",
        )
        require(
            self.dataset not in FILE_DATASETS or self.path != "" or self.dataset in DEFAULT_PATHS,
            "path",
            f"is required for dataset {self.dataset} (no download: point it at local files)",
        )
        require(0 <= self.loader_workers <= 64, "loader_workers", "must be in [0, 64]")
        require(
            self.factory == "" or re.fullmatch(r"[^:]+:[A-Za-z_][A-Za-z0-9_]*", self.factory) is not None,
            "factory",
            "must look like package.module:function or path/to/file.py:function",
        )
        require(self.test_path == "" or self.dataset == "libsvm", "test_path", "applies to dataset libsvm only")
        require(self.features >= 0, "features", "must be >= 0 (0 = infer from the files)")
        require(self.features <= MAX_ELEMENTS, "features", "must be <= 2^28 (one sample must fit in 1 GiB of float32)")
        require(self.features == 0 or self.dataset == "libsvm", "features", "applies to dataset libsvm only")


@dataclass(frozen=True)
class WorkerConfig:
    # cpu | cuda | cuda:N: where gradients are computed (the wire is always host memory). cuda spreads the ranks
    # over the visible GPUs (async: rank i on cuda:(i mod GPUs); sync: rank i on cuda:LOCAL_RANK)
    device: str = "cpu"
    # the devices the ranks take in turn (rank i on devices[i mod len]), e.g. [cuda:0, cuda:1]; overrides device
    devices: tuple[str, ...] = ()
    threads: int = 1  # torch intra-op threads per worker process
    # mixed precision for the forward and backward: bf16 runs them under torch.autocast in bfloat16; the
    # parameters, gradients and pushes stay float32
    amp: Literal["none", "bf16"] = "none"
    # how often (in pushes) a worker sends its model's buffers (BatchNorm running statistics) with a push; the
    # server keeps each worker's latest and serves their mean in snapshots and checkpoints. 0: never
    buffers_every: int = 10
    slowdown: tuple[float, ...] = ()  # per-rank compute-time multiplier (1 to 1000); missing ranks run at 1
    jitter: float = 0.0  # random extra compute time, as a fraction of the step's compute time
    compute_s: float = 0.0  # simulated extra compute per step (seconds of sleep), scaled by slowdown
    # worker ranks hosted by one OS process: each is a full worker (own socket, own seeds) on its own
    # thread, so many tiny workers fit on few cores; the launcher starts ceil(workers / per_process)
    per_process: int = 1

    def check(self) -> None:
        for key, value in (("device", self.device), *(("devices", d) for d in self.devices)):
            match = re.fullmatch(r"cpu|cuda(:(\d+))?", value)
            require(match is not None, key, f"must be cpu, cuda or cuda:N, got {value!r}")
            assert match is not None
            require(
                int(match[2] or 0) <= MAX_CUDA_INDEX, key, "cuda:N takes N <= 127 (torch's device index is an int8)"
            )
        require(1 <= self.threads <= MAX_THREADS, "threads", "must be in [1, 1024]")
        require(all(1 <= s <= MAX_FACTOR for s in self.slowdown), "slowdown", "factors must be in [1, 1000]")
        require(0 <= self.jitter <= MAX_FACTOR, "jitter", "must be in [0, 1000]")
        require(self.compute_s >= 0, "compute_s", "must be >= 0")
        longest = max(self.slowdown, default=1.0) * (1 + self.jitter) * self.compute_s
        require(
            longest <= MAX_WAIT_S,
            "compute_s",
            "times the largest slowdown and (1 + jitter) must be <= 2147483 s (a sleep of 24.8 days)",
        )
        require(1 <= self.per_process <= 256, "per_process", "must be in [1, 256]")
        require(self.buffers_every >= 0, "buffers_every", "must be >= 0 (0: buffers are never sent)")


@dataclass(frozen=True)
class OptimizerConfig:
    name: OptimizerName = "amsgrad"  # the server's step (in sync mode, every rank's)
    form: Literal["torch", "paper"] = "torch"  # amsgrad: torch == torch.optim.Adam(amsgrad=True); paper: APAM Alg. 1
    lr: float = 1e-3  # lr0; staleness.lr_rule may scale it per push
    # lr0 over the run: constant, or cosine from lr0 at update 0 to 0 at run.max_updates (applied before
    # the staleness rule; a run that stops on run.max_seconds first ends part way down the curve)
    schedule: Literal["constant", "cosine"] = "constant"
    betas: tuple[float, float] = (0.9, 0.999)  # (beta1, beta2) of amsgrad and adam
    eps: float = 1e-8  # ignored by the paper form (it has no eps)
    weight_decay: float = 0.0  # L2 added to the direction before the step (as the APAM code does)
    momentum: float = 0.0  # sgd only
    dampening: float = 0.0  # sgd only (torch semantics)
    # sgd momentum buffer: server (one, updated by every push) or shifted (one per worker, updated only by
    # that worker's pushes: the delayed-momentum form of Stability's Edge); none requires momentum 0
    momentum_mode: Literal["none", "server", "shifted"] = "server"

    def check(self) -> None:
        require(self.lr > 0, "lr", "must be > 0")
        require(all(0 <= b < 1 for b in self.betas), "betas", "must be in [0, 1)")
        require(self.eps >= 0, "eps", "must be >= 0")
        require(
            self.eps >= FLOAT32_TINY or self.name == "sgd" or self.form == "paper",
            "eps",
            "must be >= 1.2e-38 for adam and amsgrad (torch form): a smaller eps is 0 in float32, and a "
            "coordinate whose gradient is 0 steps by 0/0 = NaN",
        )
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        for key in ("lr", "eps", "weight_decay"):
            require(getattr(self, key) <= FLOAT32_MAX, key, "must be <= 3.4e38 (it enters float32 arithmetic)")
        require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        require(0 <= self.dampening <= 1, "dampening", "must be in [0, 1]")
        require(self.form == "torch" or self.name == "amsgrad", "form", "'paper' applies to amsgrad only")
        require(self.momentum == 0 or self.name == "sgd", "momentum", "applies to sgd only")
        require(
            self.momentum_mode != "none" or self.momentum == 0,
            "momentum_mode",
            "is none but optimizer.momentum is not 0",
        )


@dataclass(frozen=True)
class StalenessConfig:
    lr_rule: Literal["constant", "inverse", "stability"] = "constant"  # lr from staleness tau (see docs/algorithms.md)
    lr_from: Literal["push", "mean"] = "push"  # tau of each push, or the running mean of recent pushes
    mean_window: int = 100  # pushes in that running mean
    max_staleness: int | None = None  # pushes staler than this are dropped (or down-weighted)
    over_bound: Literal["drop", "downweight"] = "drop"  # downweight: lr *= max_staleness / tau
    ssp: int | None = None  # stale synchronous parallel: a worker > ssp pushes ahead of the slowest waits
    # average k pushes into one optimizer step, with the group's mean lr (so with lr_rule constant, over_bound
    # drop and a server momentum buffer: none of them can give each push its own lr or buffer)
    apply_every: int = 1
    barrier: bool = False  # with apply_every: hold replies until the step (apply_every = workers: sync PS)
    delay: Literal["none", "uniform", "constant"] = "none"  # artificial delay: reply with an older snapshot
    delay_versions: int = 1  # D: uniform draws from the last D versions (tau ~ U{0..D-1}); constant: tau = D-1
    delay_memory_mb: float = 4096.0  # limit on the D x parameters memory the delay mode keeps

    def check(self) -> None:
        require(self.mean_window >= 1, "mean_window", "must be >= 1")
        require(self.max_staleness is None or self.max_staleness >= 0, "max_staleness", "must be >= 0")
        require(self.ssp is None or self.ssp >= 0, "ssp", "must be >= 0")
        require(self.apply_every >= 1, "apply_every", "must be >= 1")
        require(not self.barrier or self.apply_every > 1, "barrier", "needs apply_every > 1")
        require(self.delay_versions >= 1, "delay_versions", "must be >= 1")
        require(self.delay_memory_mb > 0, "delay_memory_mb", "must be > 0")
        # a group of apply_every pushes takes one step with the group's mean lr: no push gets its own lr
        require(
            self.apply_every == 1 or self.lr_rule == "constant",
            "lr_rule",
            "must be constant with apply_every > 1 (the group steps once with the mean lr, which does not "
            "weight each push by its own lr): use lr_rule constant, or apply_every 1 for a staleness rule",
        )
        require(
            self.apply_every == 1 or self.over_bound == "drop",
            "over_bound",
            "downweight cannot be combined with apply_every > 1 (the group steps once with the mean lr, "
            "not each push with its own weight): use over_bound drop, or apply_every 1",
        )
        bound = self.max_staleness
        require(
            self.delay != "constant" or self.over_bound != "drop" or bound is None or bound >= self.delay_versions - 1,
            "max_staleness",
            "is below delay_versions - 1, the staleness delay constant gives every push: all would be dropped",
        )


@dataclass(frozen=True)
class CompressionConfig:
    method: MethodName = "none"  # error feedback
    # C, applied to what the method pushes (docs/algorithms.md, Compressors); identity sends it uncompressed
    compressor: CompressorName = "identity"
    ratio: float = 0.01  # topk/randk: fraction of coordinates kept, k = max(1, floor(ratio * d))
    k: int = 0  # topk/randk: explicit k (overrides ratio when > 0)
    scope: Literal["global", "tensor"] = "global"  # topk/randk over the flat vector or per parameter tensor
    selection: Literal["exact", "sampled"] = "exact"  # topk: exact, or approximate by a sampled threshold
    sample_fraction: float = 0.01  # sampled selection: share of coordinates sampled to estimate the threshold
    scaled: bool = False  # randk: scale kept values by d/k (unbiased) instead of not (contractive)
    levels: int = 16  # qsgd: quantization levels s (1..127)
    values: Literal["float32", "bfloat16", "float16"] = "float32"  # wire dtype of the values sent
    # sparse index coding. auto: the smallest that can address the model (int64 indices above 2^31
    # parameters); int32 needs a model of at most 2^31 parameters (the launcher checks); delta16 falls back to
    # int32 (above 2^31: int64 or bitmap) when a gap is 65536 or more
    indices: Literal["auto", "int32", "delta16", "bitmap"] = "auto"
    eta: float = 0.1  # ef21-sgdm/-sgd2m: momentum weight on the new gradient (eta = 1 gives EF21)
    resync_every: int = 1000  # server: recompute g = mean of g_i exactly every this many pushes

    def check(self) -> None:
        require(0 < self.ratio <= 1, "ratio", "must be in (0, 1]")
        require(self.k >= 0, "k", "must be >= 0 (0 = use ratio)")
        require(0 < self.sample_fraction <= 1, "sample_fraction", "must be in (0, 1]")
        require(1 <= self.levels <= 127, "levels", "must be in [1, 127]")
        require(0 < self.eta <= 1, "eta", "must be in (0, 1]")
        require(self.resync_every >= 1, "resync_every", "must be >= 1")
        require(
            self.method != "none" or self.compressor == "identity",
            "compressor",
            "method 'none' pushes dense gradients; pick an error-feedback method (e.g. ef21) to compress",
        )

    @property
    def ef21(self) -> bool:
        return self.method in EF21_METHODS


@dataclass(frozen=True)
class ServerConfig:
    # tcp://HOST:PORT (port 0 = any free port) or ipc:///path; before starting anything the launcher binds it
    # once (an address of this host, a free port) or checks the ipc folder (launch/preflight.py)
    endpoint: str = "tcp://127.0.0.1:0"
    # curve: every connection authenticated and encrypted (ZeroMQ CURVE; keys in server.keys); none: neither;
    # auto: curve when server.endpoint reaches beyond this host (not loopback, not ipc), none otherwise
    auth: Literal["auto", "none", "curve"] = "auto"
    # the key folder (server.key_secret, worker-<rank>.key ...: python -m launch.keys create DIR); empty: the
    # run folder's keys/, where the launcher writes new keys for each run
    keys: str = ""
    # python -m launch.node (runs placed by torchrun): the address this host's server binds (an IPv4/IPv6
    # literal, port chosen free); empty: this host's address on the route to MASTER_ADDR. Never a wildcard.
    interface: str = ""
    # allow binding beyond this host without CURVE (anyone who reaches the port can join and push): a warning
    # in the server's log and summary
    allow_insecure: bool = False
    # how parameters reach the workers: zmq: in every reply; shm: a worker on the server's host reads them from
    # shared memory (/dev/shm, mode 0600) and the reply carries only their version, and a worker that cannot
    # open the segment fails; auto: shm for the workers that can open it, zmq for the others (docs/design.md,
    # Shared-memory parameters). Without staleness.delay only (the delay answers with older versions). With a
    # segment, each rank is also offered a push slot for the values of its dense float32 pushes (docs/design.md,
    # Shared-memory pushes); zmq: none
    transport: Literal["auto", "zmq", "shm"] = "auto"
    # what a reply over ZeroMQ carries: dense: the parameters; topk: the Top-K of the difference between the
    # parameters and the worker's copy, which the server keeps per worker (EF21-P; docs/design.md, Compressed
    # downlink): fewer bytes for a copy that lags by what was not sent, and one float32 copy of the parameters
    # per worker in the server's memory. Workers reading shared memory are not affected
    downlink: Literal["dense", "topk"] = "dense"
    downlink_ratio: float = 0.01  # topk: share of coordinates a reply carries, k = max(1, floor(ratio * d))
    threads: int = 1  # torch intra-op threads in the server (the step is memory-bound)
    # tensors travel as frames of at most this size (1 MiB moves fastest); a tensor may have 65536 frames
    chunk_bytes: int = 1 << 20
    # larger messages are refused before allocation; the launcher checks the model's largest message fits
    # (its float32 parameters, or a push as compression makes it)
    max_message_bytes: int = 1 << 31
    send_timeout_s: float = 30.0  # a send that cannot be queued for this long fails
    reply_timeout_s: float = 120.0  # a worker waits this long for a reply before failing
    # a worker sends a request again when nothing has come from the server for this long (a lost message, or a
    # restarted server, which then makes it join again); the server answers a resent push without applying it
    # twice
    resend_s: float = 5.0
    connect_timeout_s: float = 30.0  # a worker gives up joining after this long (heartbeats extend it)
    wait_for_workers: bool = True  # start training only when all workers joined (fair timing, same start)
    join_timeout_s: float = 120.0  # ...but start with those present after this long
    stop_grace_s: float = 10.0  # after the end, how long the server waits to tell every worker to stop
    # a worker silent this long (no push, no heartbeat, no reply waiting for it) is gone: its rank may be taken
    # over by a new connection
    worker_timeout_s: float = 60.0
    # scale the direction of any optimizer step whose L2 norm exceeds this down to it (as torch's
    # clip_grad_norm_ does, per server step); null: no clipping. Pushes whose squares overflow float32 are
    # always refused, clipping or not.
    max_grad_norm: float | None = None
    # admission (ps/admission.py): messages per second one connection may send; beyond, its messages are dropped
    # unread and counted (messages_throttled). A worker sends one request per answer, far below this.
    peer_messages_per_s: float = 10000.0
    stranger_messages_per_s: float = 100.0  # ... for a connection that holds no rank (a worker joins with one)
    peer_bytes_per_s: float = 0.0  # tensor bytes per second one connection may send; 0: no limit
    status_every_s: float = 0.5  # how often the server publishes its counters (status.json)
    # server processes, each owning one contiguous range of the flat parameters, cut by bytes at multiples of
    # 64 coordinates, each with its own version clock; the first to reach a run limit ends the run
    # (docs/design.md, Shards). 1: one server
    shards: int = 1

    def check(self) -> None:
        self._check_endpoint()
        require(1 <= self.shards <= MAX_SHARDS, "shards", "must be in [1, 64]")
        self._check_shard_endpoints()
        require(self.interface == "" or _is_address(self.interface), "interface",
                f"must be an IP address of this host (e.g. 10.0.0.5), got {self.interface!r}")  # fmt: skip
        require(1 <= self.threads <= MAX_THREADS, "threads", "must be in [1, 1024]")
        require(1 << 10 <= self.chunk_bytes <= 1 << 30, "chunk_bytes", "must be in [1 KiB, 1 GiB]")
        require(self.max_message_bytes >= 1 << 16, "max_message_bytes", "must be >= 64 KiB")
        require(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", "must be > 0 (or null)")
        require(0 < self.downlink_ratio < 1, "downlink_ratio",
                "must be in (0, 1), both excluded: to send every coordinate, use server.downlink dense")  # fmt: skip
        self._check_budgets()
        require(
            self.chunk_bytes <= self.max_message_bytes,
            "chunk_bytes",
            "must be <= server.max_message_bytes: ZeroMQ drops a frame larger than its MAXMSGSIZE together "
            "with the connection, and the peer waits out its timeout",
        )
        self._check_waits()

    def _check_endpoint(self) -> None:
        tcp = re.fullmatch(r"tcp://(?:\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):(\d+|\*)", self.endpoint)  # host or [IPv6]
        require(
            tcp is not None or re.fullmatch(r"ipc://.+", self.endpoint) is not None,
            "endpoint",
            f"must look like tcp://127.0.0.1:0, tcp://[::1]:0 or ipc:///tmp/name, got {self.endpoint!r}",
        )
        require(tcp is None or tcp[1] == "*" or int(tcp[1]) <= 65535, "endpoint", "a tcp port must be in [0, 65535]")
        require(
            tcp is not None or len(self.endpoint[len("ipc://") :].encode()) <= IPC_PATH_BYTES,
            "endpoint",
            "an ipc path must be at most 107 bytes (a Unix socket address holds no more)",
        )
        self.check_exposure(self.endpoint)

    def _check_shard_endpoints(self) -> None:
        """Shard s binds port P + s or the ipc path + '-s' (shard_endpoint): the last shard's must be valid too."""
        last = shard_endpoint(self.endpoint, self.shards - 1)
        tcp = re.fullmatch(r"tcp://.*:(\d+)", last)
        require(tcp is None or int(tcp[1]) <= 65535, "endpoint",
                f"with server.shards {self.shards} the last shard would bind port {tcp and tcp[1]}, beyond 65535: "
                "pick a lower port, or 0 for any free one")  # fmt: skip
        require(
            not last.startswith("ipc://") or len(last[len("ipc://") :].encode()) <= IPC_PATH_BYTES,
            "endpoint",
            f"with server.shards {self.shards} the last shard binds {last}, longer than 107 bytes (a Unix socket "
            "address holds no more): use a shorter ipc path",
        )

    def _check_budgets(self) -> None:
        for key in ("peer_messages_per_s", "stranger_messages_per_s"):
            require(1 <= getattr(self, key) <= 1e9, key, "must be in [1, 1e9]")
        require(self.peer_bytes_per_s == 0 or 1 << 16 <= self.peer_bytes_per_s <= 1e15, "peer_bytes_per_s",
                "must be 0 (no limit) or in [65536, 1e15]")  # fmt: skip

    def _check_waits(self) -> None:
        require(
            self.send_timeout_s >= 0.001,
            "send_timeout_s",
            "must be >= 0.001 (ZeroMQ counts it in whole milliseconds: less is 0, a send that never waits)",
        )
        for key in (
            "send_timeout_s",
            "reply_timeout_s",
            "resend_s",
            "connect_timeout_s",
            "join_timeout_s",
            "stop_grace_s",
            "worker_timeout_s",
            "status_every_s",
        ):
            require(getattr(self, key) > 0, key, "must be > 0")
            require(getattr(self, key) <= MAX_WAIT_S, key, "must be <= 2147483 s (24.8 days: a C int of milliseconds)")

    @property
    def curve(self) -> bool:
        """Whether the run uses CURVE (server.auth, with auto resolved against server.endpoint)."""
        return uses_curve(self.auth, self.endpoint)

    def check_exposure(self, endpoint: str) -> None:
        """Refuse binding `endpoint` beyond this host without CURVE, unless server.allow_insecure."""
        auth = f"{self.auth!r}" + (f", which chose none for {self.endpoint}" if self.auth == "auto" else "")
        require(
            self.curve or is_local(endpoint) or self.allow_insecure,
            "endpoint",
            f"{endpoint} reaches beyond this host, but server.auth is {auth}: anyone who reaches it could join "
            "and push. Set server.auth: curve, or server.allow_insecure: true",
        )


@dataclass(frozen=True)
class FaultsConfig:
    """Deliberate message faults on every socket (tests of a lossy network; all 0 in real runs)."""

    drop: float = 0.0  # probability that a message is not sent
    duplicate: float = 0.0  # ... that it is sent twice
    delay: float = 0.0  # ... that it is sent faults.delay_s later
    reorder: float = 0.0  # ... that it is held back and sent after the next message
    delay_s: float = 0.05  # how much later a delayed message goes out
    seed: int = 0  # the faults' own random stream (each process adds its rank, the server -1)

    def check(self) -> None:
        for key in ("drop", "duplicate", "delay", "reorder"):
            require(0 <= getattr(self, key) < 1, key, "must be in [0, 1)")
        require(self.drop + self.duplicate + self.delay + self.reorder < 1, "drop", "the four must sum below 1")
        require(0 <= self.delay_s <= 60, "delay_s", "must be in [0, 60]")
        require(0 <= self.seed <= MAX_SEED, "seed", f"must be in [0, {MAX_SEED}]")


@dataclass(frozen=True)
class CheckpointConfig:
    # write a server checkpoint (parameters, optimizer and EF21 state, version, sequence numbers, policy and
    # counters) this often, in seconds of training; 0: never on a timer
    every_s: float = 30.0
    every_updates: int = 0  # ... and every this many updates; 0: never on a count
    keep: int = 3  # the newest this many checkpoints are kept in RUN/checkpoints/
    at_end: bool = True  # and one when the run ends

    def check(self) -> None:
        require(0 <= self.every_s <= MAX_WAIT_S, "every_s", "must be in [0, 2147483] (0: off)")
        require(self.every_updates >= 0, "every_updates", "must be >= 0 (0: off)")
        require(1 <= self.keep <= 1000, "keep", "must be in [1, 1000]")


@dataclass(frozen=True)
class RunConfig:
    max_updates: int = 1000  # the server stops after this many applied updates
    max_seconds: float = 600.0  # ... or after this much wall time, whichever comes first
    eval_every_s: float = 1.0  # the server snapshots parameters this often; the evaluator scores them
    # ... and also each time the version crosses a multiple of this many updates (0: off), so that a short run
    # gets more evaluation points; a snapshot offered while the previous one is still being written is skipped
    eval_every_updates: int = 0
    eval_max_samples: int = 10000  # cap on train/test samples scored per evaluation
    # also report ||grad f(x)||^2 of the training objective (full batch over eval_max_samples, regularizer
    # included) in every metrics line; costs one backward pass per evaluation (quadratic: always reported)
    eval_grad_norm: bool = False
    progress_every_s: float = 1.0  # launcher progress line cadence
    runs_dir: str = "runs"  # run folders go to <runs_dir>/<name>-<timestamp>/
    plots: bool = True  # draw PNG plots into the run folder at the end
    # restart a process that dies, up to this many times per process (the server from its last checkpoint;
    # a worker rejoins and goes on), waiting 1, 2, 4, ... s (at most 30 s) before each restart; 0: a death
    # ends the run
    max_restarts: int = 0
    # the run stops with an error when fewer workers than this are left (a worker silent for
    # server.worker_timeout_s has left)
    min_workers: int = 1
    # TensorBoard event files in <run folder>/tensorboard/, written by the launcher as the run goes (needs the
    # tensorboard package: pip install 'taups[tensorboard]'; without it a run says so once and goes on)
    tensorboard: bool = True
    # start the roles from one fork server that imported torch once (docs/design.md, Start-up) instead of a
    # fresh interpreter each; Linux only, and a run falls back to fresh interpreters when it cannot start one
    fork_server: bool = True

    def check(self) -> None:
        require(self.max_updates >= 1, "max_updates", "must be >= 1")
        require(self.eval_max_samples >= 1, "eval_max_samples", "must be >= 1")
        require(0 <= self.max_restarts <= 1000, "max_restarts", "must be in [0, 1000]")
        require(self.min_workers >= 1, "min_workers", "must be >= 1")
        require(self.eval_every_updates >= 0, "eval_every_updates", "must be >= 0 (0: off)")
        for key in ("max_seconds", "eval_every_s", "progress_every_s"):
            require(getattr(self, key) > 0, key, "must be > 0")
            require(getattr(self, key) <= MAX_WAIT_S, key, "must be <= 2147483 s (24.8 days: a C int of milliseconds)")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"  # run folder prefix
    seed: int = 0  # model init and every worker's sampling stream derive from it
    # async: parameter server; sync: the workers form a torch.distributed group and combine every step
    mode: Literal["async", "sync"] = "async"
    workers: int = 2  # number of workers (ranks); worker.per_process of them share one process
    task: TaskConfig = field(default_factory=TaskConfig)  # the training problem: data, model, loss, minibatches
    worker: WorkerConfig = field(default_factory=WorkerConfig)  # worker processes: device, threads, stragglers
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)  # the server's optimizer
    # the uplink: error-feedback method, compressor and wire format (docs/algorithms.md, Error feedback)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    # stale pushes: lr rules, bounds, SSP, grouped steps, artificial delay (docs/algorithms.md, Staleness)
    staleness: StalenessConfig = field(default_factory=StalenessConfig)
    server: ServerConfig = field(default_factory=ServerConfig)  # the server's socket, message limits, timeouts
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # server checkpoints and resume
    faults: FaultsConfig = field(default_factory=FaultsConfig)  # deliberate message faults (tests)
    run: RunConfig = field(default_factory=RunConfig)  # when to stop, evaluation, restarts, the run folder
    # {dotted key: [values]}: run every combination (launch/sweep.py); empty = one run
    sweep: dict[str, list[Any]] = field(default_factory=dict)

    def check(self) -> None:
        require(
            re.fullmatch(r"[A-Za-z0-9_.-]+", self.name) is not None,
            "name",
            "use letters, digits, '_', '.', '-' only (it names the run folder)",
        )
        require(len(self.name) <= MAX_NAME, "name", "must be at most 200 characters (it names the run folder)")
        require(0 <= self.seed <= MAX_SEED, "seed", "must be in [0, 2^63 - 1] (torch and numpy seeds)")
        require(1 <= self.workers <= 256, "workers", "must be in [1, 256]")
        require(len(self.worker.slowdown) <= self.workers, "worker.slowdown", "has more entries than workers")
        require(self.run.min_workers <= self.workers, "run.min_workers", f"must be <= workers ({self.workers})")
        self._check_staleness()
        if self.server.shards > 1:
            self._check_shards()
        if self.mode == "sync":  # the baseline steps with the server's optimizers; nothing in it is ever stale
            self._check_sync()
        self._check_sweep()

    def _check_staleness(self) -> None:
        st = self.staleness
        require(
            not st.barrier or st.apply_every <= self.workers,
            "staleness.apply_every",
            "with a barrier it cannot exceed the number of workers (they would wait forever)",
        )
        require(
            st.delay == "none" or (st.ssp is None and st.apply_every == 1),
            "staleness.delay",
            "the artificial delay cannot be combined with ssp or apply_every",
        )
        require(
            self.server.downlink == "dense" or self.server.transport != "shm",
            "server.downlink",
            "topk compresses replies over ZeroMQ, and server.transport shm sends none (every worker reads the "
            "parameters from shared memory): use server.transport auto for workers on other hosts",
        )
        require(
            st.delay == "none" or self.server.transport != "shm",
            "server.transport",
            "shm cannot be combined with staleness.delay (a delayed reply carries an older version than the "
            "segment holds): use auto or zmq",
        )
        require(
            st.apply_every == 1 or self.optimizer.momentum_mode != "shifted",
            "optimizer.momentum_mode",
            "shifted cannot be combined with staleness.apply_every > 1 (the group's averaged step would go into "
            "the last pusher's buffer): use momentum_mode server, or apply_every 1",
        )

    def _check_shards(self) -> None:
        """What only one server can do: a step that looks at the whole direction, or one shared random history."""
        require(self.mode == "async", "server.shards", "applies to the asynchronous mode only (sync has no server)")
        require(
            self.server.max_grad_norm is None,
            "server.shards",
            "cannot be combined with server.max_grad_norm (the norm of a step spans every shard)",
        )
        require(
            self.staleness.delay == "none",
            "server.shards",
            "cannot be combined with staleness.delay (each shard would pick its delayed versions on its own)",
        )
        require(
            self.server.transport != "shm",
            "server.transport",
            "shm applies to one server only (server.shards 1); sharded runs take each shard's range over ZeroMQ",
        )

    def _check_sync(self) -> None:
        require(self.staleness.delay == "none", "staleness.delay", "does not apply in sync mode (nothing is stale)")
        require(self.server.downlink == "dense", "server.downlink", "does not apply in sync mode (there is no server)")
        require(
            self.staleness.apply_every == 1,
            "staleness.apply_every",
            "does not apply in sync mode (every step already averages all workers)",
        )
        require(
            self.worker.per_process == 1,
            "worker.per_process",
            "must be 1 in sync mode (every torch.distributed rank is its own process)",
        )

    def _check_sweep(self) -> None:
        for key, values in self.sweep.items():
            require(
                _is_setting(ExperimentConfig, key),
                f"sweep.{key}",
                "is not a setting of the config (use a dotted path such as optimizer.lr; sections cannot be swept)",
            )
            require(len(values) > 0, f"sweep.{key}", "needs at least one value")

    def device_of(self, rank: int, gpus: int) -> str:
        """The device rank `rank` computes on, given this host's number of GPUs (worker.devices, else
        worker.device with cuda spread over the GPUs)."""
        if self.worker.devices:
            return self.worker.devices[rank % len(self.worker.devices)]
        if self.worker.device == "cuda" and gpus > 0:
            return f"cuda:{rank % gpus}"
        return self.worker.device

    def slowdown(self, rank: int) -> float:
        return self.worker.slowdown[rank] if rank < len(self.worker.slowdown) else 1.0

    def worker_processes(self) -> list[range]:
        """The ranks of each worker process: ceil(workers / per_process) blocks of consecutive ranks, as even
        as possible (sizes differ by at most one, none exceeds per_process)."""
        n = -(-self.workers // self.worker.per_process)
        return [range(i * self.workers // n, (i + 1) * self.workers // n) for i in range(n)]


def _is_setting(cls: type, dotted: str) -> bool:
    """Whether `dotted` names one setting (not a section, not `sweep` itself) of the dataclass tree."""
    head, _, rest = dotted.partition(".")
    fields = {f.name for f in dataclasses.fields(cls)} - {"sweep"}
    if head not in fields:
        return False
    hint = typing.get_type_hints(cls)[head]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return rest != "" and _is_setting(hint, rest)
    return rest == ""


def _is_address(text: str) -> bool:
    """An IPv4 or IPv6 literal that names one host (no wildcard)."""
    try:
        return not ipaddress.ip_address(text).is_unspecified
    except ValueError:
        return False
