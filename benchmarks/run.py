"""Run every benchmark in this folder, one after another, and print a summary table.

Each benchmark prints its own table and writes its JSON to benchmarks/results/. `--quick` passes
--quick to each (a smoke run in a few minutes); `--only NAME ...` picks some.

    python benchmarks/run.py [--quick] [--only loop_overhead default_train]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def main() -> int:
    names = sorted(p.stem for p in HERE.glob("*.py") if p.stem != "run")
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", choices=names, default=names)
    args = parser.parse_args()
    rows = []
    for name in args.only:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if args.quick else [])])
        rows.append({"benchmark": name, "exit": code, "seconds": round(time.perf_counter() - t0, 1)})
    print(f"\n{'benchmark':20} {'exit':>4} {'seconds':>8}")
    for r in rows:
        print(f"{r['benchmark']:20} {r['exit']:>4} {r['seconds']:>8}")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / ("summary_quick.json" if args.quick else "summary.json")).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
