"""How long `trainlab train` takes to stop after SIGTERM (a preemption's grace period is 10 to 30 s).

    python benchmarks/sigterm_stop.py [--repeats 3] [--nproc 2]

Starts `trainlab train` on the default task, waits for its first epoch in the store, sends SIGTERM to the
process (the launcher under --nproc, as docker stop would) and times until it exits; prints a table and
writes benchmarks/sigterm_stop.json. Each stop writes a last checkpoint, restores the best weights and tests
them: that is all in the time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainlab.store import Store


def once(nproc: int | None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "t.db"
        cmd = [sys.executable, "-m", "trainlab", "train", "--set", "epochs=50", "--db", str(db), "--runs-dir",
               str(Path(tmp) / "runs"), "--quiet"] + (["--nproc", str(nproc)] if nproc else [])
        proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while True:
            time.sleep(0.05)
            if db.exists():
                try:
                    runs = Store(db).runs()
                except Exception:
                    continue
                if runs and runs[0]["epochs"] >= 1:
                    break
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        took = time.monotonic() - sent
        status = Store(db).runs()[0]["status"]
        assert status == "stopped", status
        return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nproc", type=int, default=None)
    args = parser.parse_args()
    times = [once(args.nproc) for _ in range(args.repeats)]
    row = {"nproc": args.nproc or 1, "repeats": args.repeats, "mean_s": statistics.mean(times),
           "max_s": max(times), "times_s": times, "load": os.getloadavg()}
    print(f"{'processes':>9}  {'mean s':>7}  {'max s':>6}")
    print(f"{row['nproc']:>9}  {row['mean_s']:7.2f}  {row['max_s']:6.2f}")
    Path(__file__).with_name("sigterm_stop.json").write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
