"""Config validation: typed, complete, and every error names the key."""

import subprocess
import sys
from pathlib import Path

import pytest

from protocol.config.loader import apply_overrides, load_experiment, read_yaml, resolved_yaml
from protocol.config.schema import ExperimentConfig
from protocol.config.typed import build
from protocol.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
# configs/ and each study's own configs (experiments/<study>/*.yaml)
CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "experiments").glob("*/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_every_shipped_config_is_valid_and_every_key_commented(path):
    load_experiment(path)
    for n, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped and not stripped.endswith(":"):
            assert "#" in line, f"{path.name}:{n} has no comment: {line!r}"


@pytest.mark.parametrize(
    "data,key",
    [
        ({"wrokers": 2}, "wrokers"),
        ({"workers": 0}, "workers"),
        ({"workers": "many"}, "workers"),
        ({"optimizer": {"lr": -1}}, "optimizer.lr"),
        ({"optimizer": {"betas": [0.9]}}, "optimizer.betas"),
        ({"optimizer": {"name": "adamw"}}, "optimizer.name"),
        ({"optimizer": {"name": "sgd", "form": "paper"}}, "optimizer.form"),
        ({"task": {"model": "cnn", "dataset": "synthetic"}}, "task.model"),
        ({"task": {"hidden": [0]}}, "task.hidden"),
        ({"task": {"synthetic": {"dim": 0}}}, "task.synthetic.dim"),
        ({"task": {"batch_size": 1.5}}, "task.batch_size"),
        ({"worker": {"device": "tpu"}}, "worker.device"),
        ({"worker": {"slowdown": [1, 0.5]}}, "worker.slowdown"),
        ({"workers": 2, "worker": {"slowdown": [1, 1, 4]}}, "worker.slowdown"),
        ({"worker": {"per_process": 0}}, "worker.per_process"),
        ({"worker": {"per_process": 1.5}}, "worker.per_process"),
        ({"mode": "sync", "worker": {"per_process": 2}}, "worker.per_process"),
        ({"server": {"endpoint": "http://x"}}, "server.endpoint"),
        ({"run": {"max_updates": 0}}, "run.max_updates"),
        ({"run": {"plots": "yes"}}, "run.plots"),
        ({"run": 5}, "run"),
        ({"name": "a b"}, "name"),
    ],
)
def test_bad_values_fail_naming_the_key(data, key):
    with pytest.raises(ConfigError) as info:
        build(ExperimentConfig, data)
    assert info.value.key == key


def test_unknown_keys_suggest_the_right_one():
    with pytest.raises(ConfigError, match="did you mean 'optimizer.lr'"):
        build(ExperimentConfig, {"optimizer": {"lrr": 0.1}})


def test_yaml_number_strings_are_numbers(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optimizer:\n  lr: 1e-3\nrun:\n  max_updates: 1e3\n")
    cfg = load_experiment(p)
    assert cfg.optimizer.lr == 1e-3 and cfg.run.max_updates == 1000


def test_overrides_are_typed_and_validated():
    data = apply_overrides({}, ["workers=3", "optimizer.lr=2e-3", "worker.slowdown=[1, 4]", "run.plots=false"])
    cfg = build(ExperimentConfig, data)
    assert cfg.workers == 3 and cfg.optimizer.lr == 2e-3 and cfg.worker.slowdown == (1.0, 4.0)
    with pytest.raises(ConfigError):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError) as info:
        build(ExperimentConfig, apply_overrides({}, ["optimizer.betas=7"]))
    assert info.value.key == "optimizer.betas"


def test_resolved_config_round_trips(tmp_path):
    cfg = load_experiment(ROOT / "configs" / "quickstart.yaml", ["workers=3"])
    p = tmp_path / "r.yaml"
    p.write_text(resolved_yaml(cfg))
    assert load_experiment(p) == cfg
    assert read_yaml(p)["workers"] == 3


def test_launcher_exits_2_naming_the_key_before_starting_anything(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch",
            str(ROOT / "configs" / "quickstart.yaml"),
            "optimizer.lr=-1",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert "optimizer.lr" in out.stderr
    assert not (tmp_path / "run").exists()


# -- bounds every field shares (protocol/config/typed.py) -------------------------------------------------------------
@pytest.mark.parametrize(
    "override,key",
    [
        ("optimizer.lr=.inf", "optimizer.lr"),
        ("optimizer.lr=1e999", "optimizer.lr"),
        ("optimizer.lr=-.inf", "optimizer.lr"),
        ("optimizer.lr=.nan", "optimizer.lr"),
        (f"optimizer.lr={10**400}", "optimizer.lr"),  # an int beyond float's range
        ("worker.slowdown=[1, .inf]", "worker.slowdown[1]"),
        ("optimizer.betas=[0.9, .nan]", "optimizer.betas[1]"),
        ("run.max_seconds=1e999", "run.max_seconds"),
        ("staleness.delay_memory_mb=.inf", "staleness.delay_memory_mb"),
    ],
)
def test_float_values_must_be_finite(override, key):
    with pytest.raises(ConfigError) as info:
        build(ExperimentConfig, apply_overrides({}, [override]))
    assert info.value.key == key


@pytest.mark.parametrize(
    "override,key",
    [
        (f"seed={2**70}", "seed"),
        (f"run.max_updates={2**63}", "run.max_updates"),
        ("run.max_updates=1e30", "run.max_updates"),
        (f"staleness.max_staleness={-(2**63) - 1}", "staleness.max_staleness"),
        (f"compression.k={2**64}", "compression.k"),
        (f"task.hidden=[{2**64}]", "task.hidden[0]"),
    ],
)
def test_int_values_must_fit_in_64_bits(override, key):
    with pytest.raises(ConfigError, match="64-bit|must be") as info:
        build(ExperimentConfig, apply_overrides({}, [override]))
    assert info.value.key == key


# -- the YAML file itself (protocol/config/loader.py) -----------------------------------------------------------------
@pytest.mark.parametrize(
    "text,key,lines",
    [
        ("workers: 2\nworkers: 3\n", "workers", (1, 2)),
        ("optimizer:\n  lr: 0.1\n  betas: [0.9, 0.99]\n  lr: 0.2\n", "optimizer.lr", (2, 4)),
        ("sweep:\n  seed: [0, 1]\n  seed: [2]\n", "sweep.seed", (2, 3)),
        ("optimizer: {lr: 1, lr: 2}\n", "optimizer.lr", (1, 1)),
    ],
)
def test_yaml_duplicate_keys_are_refused_naming_the_key_and_both_lines(tmp_path, text, key, lines):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_yaml(p)
    assert info.value.key == key
    assert f"written twice in {p}: line {lines[0]} and line {lines[1]}" in info.value.message


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run: &r {max_updates: 5, plots: false}\noptimizer:\n  lr: 0.5\n")
    assert read_yaml(p)["run"] == {"max_updates": 5, "plots": False}
    p.write_text("base: &b {lr: 1, eps: 0.5}\nmine:\n  <<: *b\n  lr: 2\n")
    assert read_yaml(p)["mine"] == {"lr": 2, "eps": 0.5}


def test_override_values_with_duplicate_keys_are_refused():
    with pytest.raises(ConfigError, match="written twice in the override") as info:
        apply_overrides({}, ["optimizer={lr: 1, lr: 2}"])
    assert info.value.key == "optimizer.lr"


def test_config_file_that_is_a_folder_or_not_text_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a YAML file") as info:
        read_yaml(tmp_path)
    assert info.value.key == "<file>"
    p = tmp_path / "binary.yaml"
    p.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        read_yaml(p)


def test_launcher_exits_2_when_the_config_is_a_folder(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "launch", str(tmp_path), "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 2, out.stderr
    assert "is a folder, not a YAML file" in out.stderr and "Traceback" not in out.stderr


# -- per-field bounds where a value reaches a narrower consumer (protocol/config/schema.py) ---------------------------
@pytest.mark.parametrize(
    "overrides,key",
    [
        (["seed=-1"], "seed"),  # numpy's SeedSequence takes no negative seed
        ([f"seed={2**63}"], "seed"),
        (["task.dataset=synthetic", "task.synthetic.data_seed=-1"], "task.synthetic.data_seed"),
        (["server.send_timeout_s=1e10"], "server.send_timeout_s"),  # ZeroMQ SNDTIMEO: a C int of milliseconds
        (["server.send_timeout_s=0.0004"], "server.send_timeout_s"),  # 0 ms: a send that never waits
        (["server.reply_timeout_s=2147484"], "server.reply_timeout_s"),
        (["run.max_seconds=1e12"], "run.max_seconds"),
        (["server.max_message_bytes=1e30"], "server.max_message_bytes"),  # ZMQ_MAXMSGSIZE is an int64
        (["server.endpoint=tcp://127.0.0.1:70000"], "server.endpoint"),
        (["server.endpoint=ipc:///tmp/" + "x" * 110], "server.endpoint"),
        # shard s binds port P + s and ipc path + "-s": the last shard's must fit too
        (["server.endpoint=tcp://127.0.0.1:65535", "server.shards=2"], "server.endpoint"),
        (["server.endpoint=tcp://127.0.0.1:65530", "server.shards=7"], "server.endpoint"),
        (["server.endpoint=ipc:///tmp/" + "x" * 102, "server.shards=2"], "server.endpoint"),
        (["server.endpoint=ipc:///tmp/" + "x" * 101, "server.shards=11"], "server.endpoint"),
        (["server.threads=4096"], "server.threads"),
        (["worker.threads=4096"], "worker.threads"),
        (["worker.device=cuda:128"], "worker.device"),  # torch reads it as cuda:-128
        (["worker.slowdown=[1, 1e9]"], "worker.slowdown"),
        (["worker.jitter=1e9"], "worker.jitter"),
        (["worker.compute_s=1e6", "worker.slowdown=[1, 100]"], "worker.compute_s"),
        (["optimizer.lr=1e39"], "optimizer.lr"),
        (["optimizer.eps=0"], "optimizer.eps"),  # torch-form adam: a zero gradient steps by 0/0 = NaN
        (["optimizer.eps=1e-50"], "optimizer.eps"),  # 0 in float32
        (["task.reg_lambda=1e39"], "task.reg_lambda"),
        (["task.hidden=[268435457]"], "task.hidden"),
        (["task.dataset=libsvm", "task.path=f", f"task.features={2**40}"], "task.features"),
        (["task.dataset=synthetic", "task.synthetic.classes=10000000"], "task.synthetic.classes"),
        (["task.dataset=synthetic", "task.synthetic.noise=1.5"], "task.synthetic.noise"),  # a flip rate
        (
            ["task.dataset=synthetic", "task.synthetic.kind=quadratic", "task.synthetic.init_scale=1e30"],
            "task.synthetic.init_scale",
        ),
        (["name=" + "n" * 201], "name"),
    ],
)
def test_values_beyond_what_their_consumer_takes_are_refused(overrides, key):
    with pytest.raises(ConfigError) as info:
        build(ExperimentConfig, apply_overrides({}, overrides))
    assert info.value.key == key


def test_bounds_keep_the_values_their_consumers_take():
    cfg = build(
        ExperimentConfig,
        apply_overrides(
            {},
            [
                f"seed={2**63 - 1}",
                "server.send_timeout_s=2147483.647",
                f"server.max_message_bytes={2**63 - 1}",
                "server.endpoint=tcp://127.0.0.1:65535",
                "worker.device=cuda:127",
                "optimizer.name=sgd",
                "optimizer.eps=0",  # sgd has no eps
                "worker.compute_s=2",
                "worker.slowdown=[1, 1000]",
            ],
        ),
    )
    assert cfg.seed == 2**63 - 1 and cfg.server.max_message_bytes == 2**63 - 1
    assert build(ExperimentConfig, {"optimizer": {"form": "paper", "eps": 0}}).optimizer.eps == 0  # no eps there


def test_chunk_bytes_above_max_message_bytes_is_refused_naming_both_keys():
    data = apply_overrides({}, ["server.chunk_bytes=1048576", "server.max_message_bytes=524288"])
    with pytest.raises(ConfigError, match="server.max_message_bytes") as info:
        build(ExperimentConfig, data)
    assert info.value.key == "server.chunk_bytes"


# -- staleness combinations that cannot do what they say -----------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,key,instead",
    [
        (["staleness.apply_every=4", "staleness.lr_rule=inverse"], "staleness.lr_rule", "use lr_rule constant"),
        (["staleness.apply_every=4", "staleness.lr_rule=stability"], "staleness.lr_rule", "use lr_rule constant"),
        (
            ["staleness.apply_every=4", "staleness.max_staleness=3", "staleness.over_bound=downweight"],
            "staleness.over_bound",
            "use over_bound drop",
        ),
        (
            [
                "staleness.apply_every=2",
                "optimizer.name=sgd",
                "optimizer.momentum=0.9",
                "optimizer.momentum_mode=shifted",
            ],
            "optimizer.momentum_mode",
            "use momentum_mode server",
        ),
    ],
)
def test_grouped_steps_refuse_per_push_lr_and_per_worker_momentum(overrides, key, instead):
    with pytest.raises(ConfigError) as info:
        build(ExperimentConfig, apply_overrides({}, overrides))
    assert info.value.key == key and instead in info.value.message


def test_grouped_steps_keep_the_constant_rule_drop_and_server_momentum():
    data = apply_overrides({}, ["staleness.apply_every=4", "staleness.max_staleness=3", "optimizer.name=sgd"])
    assert build(ExperimentConfig, data).staleness.apply_every == 4
    data = apply_overrides({}, ["staleness.lr_rule=inverse", "staleness.over_bound=downweight", "optimizer.name=sgd"])
    assert (
        build(ExperimentConfig, apply_overrides(data, ["optimizer.momentum_mode=shifted"])).staleness.apply_every == 1
    )


def test_a_constant_delay_beyond_max_staleness_is_refused():
    data = apply_overrides({}, ["staleness.delay=constant", "staleness.delay_versions=5", "staleness.max_staleness=3"])
    with pytest.raises(ConfigError, match="all would be dropped") as info:
        build(ExperimentConfig, data)
    assert info.value.key == "staleness.max_staleness"
    assert build(ExperimentConfig, apply_overrides(data, ["staleness.max_staleness=4"])).staleness.max_staleness == 4


def test_every_shards_endpoint_within_bounds_is_kept():
    for endpoint, shards in [("tcp://127.0.0.1:65534", 2), ("tcp://127.0.0.1:0", 64), ("tcp://127.0.0.1:*", 3),
                             ("ipc:///tmp/" + "x" * 94, 10)]:  # fmt: skip
        cfg = build(ExperimentConfig, apply_overrides({}, [f"server.endpoint={endpoint}", f"server.shards={shards}"]))
        assert cfg.server.shards == shards
