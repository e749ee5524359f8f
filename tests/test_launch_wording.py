"""What the launcher prints says what happened, in English (quick tier): no normal event read as an error,
no plots promised that were not drawn, no '1 workers', no sweep-sweep folder."""

from pathlib import Path

from launch.__main__ import describe
from launch.inproc import make_config
from launch.summary import build_summary, format_summary
from launch.sweep import expand_sweep
from launch.sweep_run import _sweep_exit, sweep_folder_name
from launch.sweep_tables import PointResult
from launch.wording import count
from protocol.runfolder.records import RunSummary, ServerSummary, write_record

ROOT = Path(__file__).resolve().parents[1]


def test_pushes_that_arrived_after_the_stop_are_not_counted_as_refused(tmp_path):
    server = ServerSummary(updates=10, pushes_received=15, pushes_applied=10, pushes_rejected=5)
    server.rejected_by_reason = {"stopped": 4, "bad_numel": 1}
    write_record(tmp_path / "server_summary.json", server)
    s = build_summary(tmp_path, make_config(), {})
    assert s.pushes_rejected == 5 and s.pushes_refused == 1


def test_the_final_line_counts_only_refused_pushes():
    line = format_summary(RunSummary(updates=300, wall_s=1.0, pushes_rejected=4, pushes_refused=0), "RUN")
    assert "0 pushes not applied (4 more came after the stop)" in line and "4 pushes" not in line
    assert "1 push not applied" in format_summary(RunSummary(pushes_rejected=5, pushes_refused=1), "RUN")


def test_the_final_line_gives_the_downlink_bytes_when_replies_are_compressed():
    s = RunSummary(updates=3, wall_s=1.0, uplink_bytes=3 * 2**20, downlink_bytes=2**19, downlink="topk")
    assert "uplink 3.0 MiB, downlink 0.5 MiB (topk)," in format_summary(s, "RUN")
    s.downlink = "dense"  # dense replies may come through shared memory: the wire's bytes would mislead
    assert "downlink" not in format_summary(s, "RUN")
    assert "1.0/s), not evaluated, staleness" in format_summary(
        RunSummary(updates=3, wall_s=1.0, updates_per_s=1.0), "R"
    )


def test_the_final_line_names_the_plots_only_when_they_are_drawn():
    s = RunSummary(updates=3, wall_s=1.0)
    assert format_summary(s, "RUN", plots=True).endswith("results: RUN/summary.json, plots in RUN/plots/")
    assert format_summary(s, "RUN", plots=False).endswith("results: RUN/summary.json")


def test_counted_nouns_are_singular_for_one():
    assert [count(n, "worker") for n in (0, 1, 2)] == ["0 workers", "1 worker", "2 workers"]
    assert count(1, "push", "pushes") == "1 push" and count(3, "push", "pushes") == "3 pushes"
    one = describe(make_config(workers=1, run={"max_updates": 1}))
    assert one.startswith("1 worker, ") and "until 1 update or" in one
    assert describe(make_config(workers=4)).startswith("4 workers, ")
    assert format_summary(RunSummary(updates=1, wall_s=1.0), "RUN").startswith("done: 1 update in ")


def test_a_sweep_named_sweep_gets_a_sweep_folder_not_sweep_sweep():
    assert sweep_folder_name("sweep") == "sweep"
    assert sweep_folder_name("lr_sweep") == "lr_sweep"
    assert sweep_folder_name("digits") == "digits-sweep"


def test_sweep_messages_count_points_in_english(tmp_path, capsys):
    [point] = expand_sweep(make_config(sweep={"seed": [0]}))
    assert _sweep_exit([PointResult(point, tmp_path, None, "boom")], tmp_path) == 1
    captured = capsys.readouterr()
    assert "sweep done: 0 of 1 point succeeded" in captured.out
    assert f"error: 1 point failed: {point.folder}" in captured.err


def test_overrides_may_come_after_the_flags(tmp_path, capsys):
    """`python -m launch.prepare CONFIG --run-dir DIR key=value` (and launch, launch.node): argparse would
    otherwise refuse the override as an unrecognized argument."""
    from pathlib import Path

    import yaml

    from launch import prepare

    run, tiny = tmp_path / "run", Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
    assert prepare.main([str(tiny), "--run-dir", str(run), "workers=3", "seed=9"]) == 0
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["workers"] == 3 and written["seed"] == 9
    capsys.readouterr()


def test_prepare_prints_a_command_per_shard_and_the_way_in_from_another_host(tmp_path):
    from launch.prepare import commands
    from protocol.config.loader import load_experiment

    overrides = ["server.shards=2", "server.endpoint=tcp://*:5555", f"server.keys={tmp_path / 'keys'}"]
    cfg = load_experiment(ROOT / "configs" / "tiny.yaml", overrides)
    text = commands(cfg, tmp_path / "hand")
    assert "--shard 0" in text and "--shard 1" in text and "launch.evaluate" not in text
    assert "--server tcp://127.0.0.1:5555 --server tcp://127.0.0.1:5556" in text  # a wildcard is reached here so
    assert "--server tcp://HOST_A:5555 --server tcp://HOST_A:5556" in text and "--keys keys" in text
    assert text.splitlines()[-2].endswith(f"python -m launch.summary {tmp_path / 'hand'}")
    one = commands(load_experiment(ROOT / "configs" / "tiny.yaml"), tmp_path / "one")
    assert "--server <endpoint>" in one and "launch.evaluate" in one and "HOST_A" not in one


def test_plain_ef21_under_an_adaptive_server_gets_a_note_naming_the_keys():
    from launch.advice import advice
    from protocol.config.loader import load_experiment

    def notes(*overrides):
        return advice(load_experiment(ROOT / "configs" / "digits_ef21.yaml", list(overrides)))

    assert notes() == []  # the config's own sgd server
    (note,) = notes("optimizer.name=amsgrad", "optimizer.lr=1e-3")
    assert "compression.method ef21 with optimizer.name amsgrad" in note and "Error feedback under" in note
    assert notes("optimizer.name=adam") and not notes("optimizer.name=adam", "compression.method=ef21-sgdm")
