"""The recipe's budget promise: total wall time of `trainlab recipe --budget B`, measured from outside the
process (start-up, torch's import and the report included), against B x 1.05 + 10 s.

    python benchmarks/recipe_budget.py                        # budgets 0.5, 1 and 5 minutes on digits/mlp
    python benchmarks/recipe_budget.py --budgets 0.5,1 --task digits --model mlp

Prints one row per budget and writes benchmarks/results/recipe_budget.json (with the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="0.5,1,5", help="minutes, comma-separated")
    parser.add_argument("--task", default="digits")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--out", default=str(RESULTS / "recipe_budget.json"))
    args = parser.parse_args()
    rows = []
    for budget in [float(b) for b in args.budgets.split(",") if b.strip()]:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "trainlab", "recipe", "--task", args.task, "--set", f"model={args.model}",
                   "--budget", f"{budget:g}", "--db", f"{tmp}/r.db", "--out", f"{tmp}/report", "--runs-dir",
                   f"{tmp}/runs", "--quiet"]
            load0 = os.getloadavg()[0]
            t0 = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.time() - t0
        limit = 60 * budget * 1.05 + 10
        rows.append({"budget_min": budget, "wall_s": wall, "limit_s": limit, "kept": wall <= limit,
                     "returncode": proc.returncode, "load_start": load0, "load_end": os.getloadavg()[0],
                     "tail": proc.stdout[-300:] + proc.stderr[-300:]})
        print(f"budget {budget:g} min: {wall:6.1f} s wall (limit {limit:.0f} s) {'kept' if wall <= limit else 'OVER'}; "
              f"rc {proc.returncode}; load {load0:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps({"task": args.task, "model": args.model, "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0 if all(r["kept"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
