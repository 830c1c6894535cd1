"""CLI start-up: the light commands against `python -c pass`, and a training command's time to its first step.

Light commands (`--help`, `runs`, `schedule --json`, `diagnose`, `dashboard` until it prints its address)
are timed in fresh interpreters, alternating with the baseline `python -c pass` so that background load
hits both alike; the median of --reps runs each, and its ratio to the baseline's median. Target: each
under 0.5 s on an idle machine, with no torch imported (tests/cli/test_cli_conventions.py checks the
latter). The dashboard is timed twice: until it prints its address (its socket is listening then), and
until it has answered its first API request (`/api/studies`), what a browser opening the address waits for.
Then one `trainlab train` of a small MLP (1 epoch) reports where its time to the first step goes: the torch
import, fit()'s setup (of which building the first optimizer, where torch imports its compiler), and the
first step itself. Writes benchmarks/results/cli_startup.json (or _quick).

Bytecode caches as a user has them: an installed package has its .pyc files, so every command here runs
with caches (written to a temporary PYTHONPYCACHEPREFIX by one untimed run of each command, so that this
checkout's src/ gets no __pycache__), even where the environment sets PYTHONDONTWRITEBYTECODE (this project's
sandboxes do: there each start compiles src/ again, ~0.1 s more). `--compile-each-start` measures that way.

    python benchmarks/cli_startup.py [--quick] [--reps 7] [--compile-each-start]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def _bytecode(env: dict, folder: str, compile_each_start: bool) -> None:
    """Caches as an install has them (written under `folder`), or none: compile on every start."""
    if compile_each_start:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = folder


def _store(folder: Path) -> str:
    sys.path.insert(0, SRC)
    from trainlab.store import Store

    db = str(folder / "bench.db")
    store = Store(db)
    for i in range(20):
        run = store.create_run(name=f"r{i}", hparams={"lr": 0.01 * (i + 1)}, study="bench")
        store.log_metrics(run, [(s, 1 + s // 100, "train/loss", 2.0 / (1 + s)) for s in range(1000)]
                          + [(99 + 100 * e, 1 + e, "val/acc", 0.5 + e / 30) for e in range(10)], epochs=10)
        store.finish_run(run, "completed", best_metric=0.8, best_epoch=10, epochs=10, summary={"num_classes": 10})
    store.close()
    return db


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def _dashboard(db: str, answered: list[float]) -> float:
    """Seconds from launch until the dashboard prints the address it listens on; appends to `answered` the
    seconds until it has answered GET /api/studies (what the page asks first)."""
    import urllib.request

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", "dashboard", "--port", "0", "--db", db, "--quiet"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        seconds = time.perf_counter() - t0
        assert line.startswith("http://"), line
        with urllib.request.urlopen(line.strip().rstrip("/") + "/api/studies", timeout=60) as response:
            assert response.status == 200
            response.read()
        answered.append(time.perf_counter() - t0)
    finally:
        proc.kill()
        proc.wait()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--compile-each-start", action="store_true",
                        help="no bytecode caches: compile src/ on every start (as PYTHONDONTWRITEBYTECODE=1 does)")
    args = parser.parse_args()
    reps = 3 if args.quick else args.reps
    tl = [sys.executable, "-m", "trainlab"]
    with tempfile.TemporaryDirectory() as tmp:
        _bytecode(ENV, str(Path(tmp) / "pycache"), args.compile_each_start)
        db = _store(Path(tmp))
        answered: list[float] = []
        commands = {"trainlab --help": lambda: _run([*tl, "--help"]),
                    "trainlab runs": lambda: _run([*tl, "runs", "--db", db]),
                    "trainlab schedule --json": lambda: _run([*tl, "schedule", "--json"]),
                    "trainlab diagnose 1": lambda: _run([*tl, "diagnose", "1", "--db", db]),
                    "trainlab dashboard (until listening)": lambda: _dashboard(db, answered)}
        for fn in commands.values():  # untimed: writes the bytecode caches (and warms the file cache)
            fn()
        answered.clear()
        times: dict[str, list[float]] = {"python -c pass": [], **{k: [] for k in commands}}
        for _ in range(reps):
            for name, fn in commands.items():  # alternate: baseline, command, baseline, command ...
                times["python -c pass"].append(_run([sys.executable, "-c", "pass"]))
                times[name].append(fn())
        times["trainlab dashboard (first API answer)"] = answered
        base = statistics.median(times["python -c pass"])
        rows = [{"command": k, "median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3),
                 "ratio_to_python": round(statistics.median(v) / base, 1)} for k, v in times.items()]
        done = subprocess.run([*tl, "train", "--set", "model=mlp", "--set", "epochs=1", "--db", str(Path(tmp) / "t.db"),
                               "--runs-dir", str(Path(tmp) / "runs"), "--json", "--quiet"], env=ENV,
                              capture_output=True, text=True, check=True, cwd=tmp)
        startup = json.loads(done.stdout)["startup"]
    load = os.getloadavg()
    print(f"{'command':40} {'median s':>9} {'min s':>7} {'x python':>9}")
    for r in rows:
        print(f"{r['command']:40} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['ratio_to_python']:>9.1f}")
    first = startup["torch_import_s"] + startup["setup_s"] + startup["first_step_s"]
    print(f"\ntrainlab train (mlp, 1 epoch): first step {first:.2f} s after the command began its work: torch import "
          f"{startup['torch_import_s']:.2f} s, fit() setup {startup['setup_s']:.2f} s (building the optimizer "
          f"{startup['optimizer_s']:.2f} s, torch._dynamo's import {startup['torch_dynamo_import_s']:.2f} s), the "
          f"first step {startup['first_step_s'] * 1e3:.0f} ms, later steps {startup['later_step_s'] * 1e3:.2f} ms")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} cores, {reps} reps, "
          + ("no bytecode caches (compiled on every start)" if args.compile_each_start else "with bytecode caches"))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("cli_startup_quick.json" if args.quick else "cli_startup.json")
    out.write_text(json.dumps({"rows": rows, "train_startup": startup, "reps": reps, "loadavg": load,
                               "bytecode_caches": not args.compile_each_start,
                               "cores": os.cpu_count(), "python": sys.version.split()[0]}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
