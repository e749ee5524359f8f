"""The report's setup paragraphs, one per batch that ran, every figure read from the runs' resolved configs."""

from __future__ import annotations

from experiments.common.templates import Prose
from experiments.fashion_mnist.analysis import RunFigures
from experiments.fashion_mnist.plan import CONFIG, EF21, SLOWDOWN, WIDE
from protocol.config.schema import ExperimentConfig, TaskConfig

prose = Prose(__package__)
AUGMENT = {"flip": "augment_flip", "flip_shift": "augment_flip_shift"}  # task.augment


def setup_text(runs: dict[str, list[RunFigures]], n_train: int, n_test: int, cores: int) -> str:
    parts = []
    if runs["dense"]:
        parts.append(small(runs["dense"][0], n_train, n_test, cores))
    parts += [ef21(r, EF21, "setup_ef21") for r in runs["ef21"]]
    if runs["straggler"]:
        parts.append(straggler(runs["straggler"]))
    wide = [r for r in runs["wide"] if r.run.config.compression.method != "none"]
    if wide:
        parts.append(ef21(wide[0], WIDE, "setup_wide"))
    return "\n\n".join(parts)


def model(task: TaskConfig, params: int, classes: int = 10) -> str:
    """The built-in CNN of a task section, in words."""
    return prose(
        "model",
        channels=list(task.channels),
        bn=prose("model_bn" if task.batch_norm else "model_relu"),
        pool=prose("pool_each" if task.pool == "each" else "pool_last"),
        head=prose("model_head", head=list(task.head)) if task.head else "",
        dropout=prose("model_dropout", p=f"{task.dropout:g}") if task.dropout else "",
        augment=prose(AUGMENT[task.augment]) if task.augment != "none" else "",
        classes=classes,
        params=f"{params:,}",
    )


def lr_words(cfg: ExperimentConfig) -> str:
    """lr0 and its schedule, in words."""
    opt = cfg.optimizer
    if opt.schedule == "constant":
        return prose("lr_constant", lr=f"{opt.lr:g}")
    return prose("lr_cosine", lr=f"{opt.lr:g}", horizon=f"{cfg.run.max_updates:,}")


def small(r: RunFigures, n_train: int, n_test: int, cores: int) -> str:
    cfg = r.run.config
    scored = "scored_all" if cfg.run.eval_max_samples >= n_test else "scored_part"
    return prose(
        "setup_small",
        config=CONFIG,
        model=model(cfg.task, r.params),
        dataset=cfg.task.dataset,
        n_train=f"{n_train:,}",
        n_test=f"{n_test:,}",
        scored=prose(scored, eval_max=f"{cfg.run.eval_max_samples:,}"),
        workers=cfg.workers,
        threads=cfg.worker.threads,
        cores=cores,
        batch=cfg.task.batch_size,
        sampling=cfg.task.sampling,
        optimizer=cfg.optimizer.name,
        form=cfg.optimizer.form,
        lr=lr_words(cfg),
        buffers_every=cfg.worker.buffers_every,
        max_updates=cfg.run.max_updates,
        epochs=f"{cfg.run.max_updates * cfg.task.batch_size / n_train:.1f}",
        max_seconds=f"{cfg.run.max_seconds:g}",
        eval_every=f"{cfg.run.eval_every_s:g}",
        gap="-" if r.eval_gap_s is None else f"{r.eval_gap_s:.0f}",
    )


def ef21(r: RunFigures, config: str, fragment: str) -> str:
    """The EF21-SGDM run of the small CNN (setup_ef21) or of the wide one (setup_wide)."""
    cfg = r.run.config
    c = cfg.compression
    k = c.k or max(1, int(c.ratio * r.params))
    values = dict(config=config, method=c.method, compressor=c.compressor, ratio_pct=f"{100 * c.ratio:g}", k=f"{k:,}")
    values["params"] = f"{r.params:,}"
    if fragment == "setup_wide":
        return prose(fragment, model=model(cfg.task, r.params), seconds=f"{cfg.run.max_seconds:g}", **values)
    return prose(
        fragment,
        run=r.run.key,
        eta=f"{c.eta:g}",
        scope=c.scope,
        values=c.values,
        indices=c.indices,
        optimizer=cfg.optimizer.name,
        lr=lr_words(cfg),
        max_updates=cfg.run.max_updates,
        max_seconds=f"{cfg.run.max_seconds:g}",
        **values,
    )


def straggler(runs: list[RunFigures]) -> str:
    cfg = runs[0].run.config
    factor = max(cfg.worker.slowdown, default=1.0)
    seconds = {r.run.config.mode: f"{r.run.config.run.max_seconds:g} s" for r in runs}
    return prose(
        "setup_straggler",
        config=CONFIG,
        slowdown_key=SLOWDOWN,
        rank=cfg.worker.slowdown.index(factor) if cfg.worker.slowdown else "-",
        factor=f"{factor:g}",
        extra=f"{factor - 1:g}",
        workers=cfg.workers,
        optimizer=cfg.optimizer.name,
        lr=lr_words(cfg),
        async_s=seconds.get("async", "-"),
        sync_s=seconds.get("sync", "-"),
    )
