"""One convention across commands: global options anywhere, help on every option, enumerated values checked,
-o/--out, stdout for the result only, closed pipes, and light commands that import no torch."""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import strict_json
from trainlab.cli import COMMANDS, build_parser, main
from trainlab.store import Store

SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
TINY = ["--set", "model=mlp", "--set", "width=8", "--set", "epochs=1"]


def _store_with_a_run(path) -> str:
    """A store holding one finished run with curves, written through the Store API (no training, no torch)."""
    db = str(path / "s.db")
    store = Store(db)
    run = store.create_run(name="fake", hparams={"lr": 0.1, "model": "mlp"}, study="st")
    store.log_metrics(run, [(s, 1 + s // 10, "train/loss", 2.0 - s / 100) for s in range(60)]
                      + [(9 + 10 * e, 1 + e, "val/acc", 0.5 + e / 20) for e in range(6)], epochs=6)
    store.finish_run(run, "completed", best_metric=0.75, best_epoch=6, epochs=6, summary={"num_classes": 10})
    store.close()
    return db


def _parsers(parser, path=()):
    """Every (sub)parser with its command path."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_option_and_positional_has_help():
    missing = [f"{' '.join(path)} {a.option_strings or a.dest}" for path, p in _parsers(build_parser("*"))
               for a in p._actions if a.help is None and not isinstance(a, argparse._SubParsersAction)]
    assert missing == []


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_takes_the_global_options_after_it(name):
    args = build_parser(name).parse_args([name, *{"check": ["init"]}.get(name, []), *{
        "plot": ["1"], "diagnose": ["1"], "export": ["csv"]}.get(name, []),
        "--db", "x.db", "--threads", "2", "--quiet", "--json"])
    assert (args.db, args.threads, args.quiet, args.json) == ("x.db", 2, True, True)
    before = build_parser(name).parse_args(["--db", "y.db", "--json", name, *{"check": ["init"]}.get(name, []),
                                            *{"plot": ["1"], "diagnose": ["1"], "export": ["csv"]}.get(name, [])])
    assert (before.db, before.json, before.quiet, before.threads) == ("y.db", True, False, None)


@pytest.mark.parametrize("argv", [["plot", "1"], ["schedule"], ["check", "lr"], ["search", "report", "s"],
                                  ["recipe"], ["export", "csv", "1"]])
def test_one_output_flag_everywhere(argv):
    """-o and --out name what a command writes; the old spellings still parse."""
    for flag in ("-o", "--out"):
        assert build_parser(argv[0]).parse_args([*argv, flag, "dest"]).out == "dest"
    old = {"plot": "--output", "schedule": "--plot", "check": "--plot", "search": "--output"}.get(argv[0])
    if old:
        assert build_parser(argv[0]).parse_args([*argv, old, "dest"]).out == "dest"
        assert old not in build_parser(argv[0]).format_help()


def test_global_options_after_the_command_and_positionals_after_options(tmp_path, capsys):
    db = _store_with_a_run(tmp_path)
    assert main(["runs", "--db", db, "--json"]) == 0
    assert [r["name"] for r in strict_json(capsys.readouterr().out)] == ["fake"]
    assert main(["--json", "runs", "--db", db, "show", "1"]) == 0  # positionals after an option
    assert strict_json(capsys.readouterr().out)["best_metric"] == 0.75
    assert main(["runs", "--threads", "0", "--db", db]) == 2
    assert "--threads: must be >= 1, got 0" in capsys.readouterr().err


def test_enumerated_values_are_checked(tmp_path, capsys):
    db = _store_with_a_run(tmp_path)
    assert main(["runs", "--db", db, "--kind", "checks"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "trainlab: error: --kind: expected one of train, check, step, all, got 'checks'"
    assert main(["runs", "--db", db, "--kind", "check"]) == 0  # a known kind with no runs: not an error
    captured = capsys.readouterr()
    assert captured.out == "" and "no check runs" in captured.err
    assert main(["export", "tensorbored", "1", "--db", db]) == 2
    assert "FORMAT: expected one of tensorboard, mlflow, csv, got 'tensorbored'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        main(["schedule", "cosinus"])
    assert exit.value.code == 2 and "invalid choice: 'cosinus'" in capsys.readouterr().err


def test_json_is_strict_and_progress_goes_to_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--db", str(tmp_path / "t.db"), "--json"]) == 0  # not --quiet: progress on
    captured = capsys.readouterr()
    result = strict_json(captured.out)
    assert result["status"] == "completed" and "epoch 1/1" in captured.err and "lr at step" in captured.err
    startup = result["startup"]
    assert {"torch_import_s", "setup_s", "first_step_s", "later_step_s"} <= set(startup)
    stored = Store(str(tmp_path / "t.db")).run(result["run"])["summary"]
    assert stored["startup"]["first_step_s"] == startup["first_step_s"] and "torch_import_s" in stored


def _spawn(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "trainlab", *args], env=ENV, **kw)


@pytest.mark.slow
def test_closed_pipes_never_change_the_outcome(tmp_path):
    """`trainlab train | head -1` with the reader already gone, stdout and stderr both: the run completes."""
    db = str(tmp_path / "p.db")
    proc = _spawn(["train", *TINY, "--db", db, "--runs-dir", str(tmp_path / "runs")], cwd=tmp_path,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # every write to either stream now fails with EPIPE
    proc.stderr.close()
    assert proc.wait(timeout=120) == 0
    run = Store(db).run(1)
    assert run["status"] == "completed" and run["reason"] is None


def test_runs_show_json_into_a_closed_pipe_prints_no_traceback(tmp_path):
    db = _store_with_a_run(tmp_path)
    proc = _spawn(["runs", "show", "1", "--json", "--db", db], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and err == ""
    # and as a shell pipe into head
    shell = subprocess.run(f"{sys.executable} -m trainlab runs show 1 --json --db {db} | head -c 10", shell=True,
                           env=ENV, capture_output=True, text=True, timeout=60)
    assert shell.stdout == '{\n  "id": ' and shell.stderr == ""


def _imports_torch(argv: list[str], program=("-m", "trainlab")) -> bool:
    """Whether `trainlab ARGV` imported torch, from -X importtime in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-X", "importtime", *program, *argv], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return any(line.split("|")[-1].strip() == "torch" for line in done.stderr.splitlines()
               if line.startswith("import time:"))


@pytest.mark.slow  # seven fresh interpreters: several seconds on a loaded machine
def test_light_commands_import_no_torch(tmp_path):
    db = _store_with_a_run(tmp_path)
    for argv in (["--help"], ["runs", "--db", db], ["schedule", "--json"], ["diagnose", "1", "--db", db],
                 ["train", "--help"], ["export", "--help"]):
        assert not _imports_torch(argv), argv
    assert not _imports_torch(["train", "--print-config"])  # config only, nothing trained
    assert _imports_torch(["import torch"], program=("-c",))  # the detector detects


def test_dashboard_starts_without_torch(tmp_path):
    """Serving starts with neither torch nor numpy: the doctor and the downsampling load them on first use."""
    db = _store_with_a_run(tmp_path)
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "trainlab", "dashboard", "--port", "0",
                             "--db", db], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()  # the result line: the address, once it listens
        assert url.startswith("http://127.0.0.1:")
        os.kill(proc.pid, signal.SIGSTOP)  # frozen: what it imported so far is all it needed to serve
        time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        err = proc.stderr.read()
        proc.wait()
    imported = [line.split("|")[-1].strip() for line in err.splitlines() if line.startswith("import time:")]
    assert "uvicorn" in imported and "torch" not in imported and "numpy" not in imported


def test_every_command_on_the_cli_page_parses():
    """docs/cli-and-export.md: each `trainlab ...` line of a code block is accepted by the parser."""
    import re
    import shlex

    from trainlab.cli import parse

    page = (Path(__file__).resolve().parents[2] / "docs" / "cli-and-export.md").read_text()
    lines = [line.strip() for block in re.findall(r"```[a-z]*\n(.*?)```", page, flags=re.S)
             for line in block.splitlines() if line.strip().startswith("trainlab ")]
    assert len(lines) >= 10
    for line in lines:
        argv = shlex.split(line.split(" | ")[0].split("  #")[0])[1:]
        parse(argv)  # argparse exits with status 2 on anything it does not accept
