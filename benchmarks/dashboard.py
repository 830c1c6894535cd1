"""The command center on a big study: 200 runs x 5,000 steps. How fast does the study page answer and draw?

Targets (issue 6): the study page's API answers in under 1 s, and the page is fully drawn in headless
Chromium in under 3 s, both measured in this one run. The store is synthesized through the Store API
(rows shaped like fit's: train/loss and lr every step, ratios and grad norm every 50 steps, epoch
metrics every 250 steps), which is fine for a benchmark of reading.

Measured, on one server process serving a fresh app each time (so "cold" includes reading and
downsampling every run in the database; "warm" answers from the per-run cache that stays valid while
a run does not write):
- api cold / warm: GET /api/studies/{id} over real HTTP (uvicorn on 127.0.0.1), median of warm repeats;
- page cold / warm: navigation start -> every chart drawn (the page sets body[data-ready] after the
  last chart is painted; the first screen of charts is drawn first, the rest a batch per frame),
  Debian's Chromium headless (1600x1000) via Playwright, the server's cache cold / warm;
- doctor: until the background doctor has diagnosed every run (badges complete).

    python benchmarks/dashboard.py [--runs 200] [--steps 5000] [--db big.db] [--quick]

Writes benchmarks/results/dashboard.json (dashboard_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import re
import subprocess

import httpx
import numpy as np

from trainlab.store import Store

RESULTS = Path(__file__).parent / "results"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
STEPS_PER_EPOCH = 250
PARAMS = ("stem.0.weight", "stem.0.bias", "stage1.0.weight", "stage1.0.bias", "head.weight", "head.bias")
STUDY = "bench"


def synthesize(path: Path, runs: int, steps: int, seed: int = 0) -> float:
    """A study of `runs` runs of `steps` steps each, written through the Store API; returns seconds."""
    rng = np.random.default_rng(seed)
    store = Store(path)
    t0 = time.perf_counter()
    for r in range(runs):
        lr = float(10 ** rng.uniform(-4, -0.5))
        hp = {"lr": lr, "width": int(rng.choice([32, 64, 128])), "optimizer": str(rng.choice(["adam", "sgd"])),
              "weight_decay": float(rng.choice([0.0, 1e-4, 1e-3])), "epochs": steps // STEPS_PER_EPOCH, "seed": r}
        run = store.create_run(name=f"trial-{r}", hparams=hp, seed=r, study=STUDY)
        s = np.arange(steps)
        speed = min(1.0, lr * 30)
        loss = 2.3 * np.exp(-s * speed / 1500) + 0.3 + 0.15 * rng.standard_normal(steps) ** 2
        loss[rng.choice(steps, 3)] += 3.0  # a few spikes
        diverged = r % 20 == 7
        if diverged:
            loss[steps // 3:] = np.linspace(3, 1e4, steps - steps // 3)
        epoch = s // STEPS_PER_EPOCH + 1
        rows = [(int(i), int(e), "train/loss", float(v)) for i, e, v in zip(s, epoch, loss)]
        lrs = lr * 0.5 * (1 + np.cos(np.pi * s / steps))
        rows += [(int(i), int(e), "lr", float(v)) for i, e, v in zip(s, epoch, lrs)]
        for i in range(0, steps, 50):
            for p in PARAMS:
                rows.append((i, i // STEPS_PER_EPOCH + 1, f"ratio/{p}", float(lr * 0.1 * rng.lognormal(0, 0.3))))
            rows.append((i, i // STEPS_PER_EPOCH + 1, "grad_norm", float(rng.lognormal(0, 0.2))))
        best = 0.0
        for e in range(1, steps // STEPS_PER_EPOCH + 1):
            at = e * STEPS_PER_EPOCH - 1
            acc = 0.95 * (1 - math.exp(-e * speed / 3)) + 0.01 * rng.standard_normal()
            best = max(best, acc)
            for key, value in (("val/acc", acc), ("train/acc", acc + 0.03), ("val/loss", 2.3 - 2 * acc),
                               ("train/loss_eval", 2.2 - 2 * acc), ("epoch_time_s", 3.0), ("samples_per_s", 9000.0)):
                rows.append((at, e, key, float(value)))
        store.log_metrics(run, rows)
        if diverged:
            store.finish_run(run, "diverged", reason=f"loss became 1e4 at step {steps // 3} (lr {lr:.3g})")
        else:
            store.finish_run(run, "completed", best_metric=best, best_epoch=steps // STEPS_PER_EPOCH,
                             epochs=steps // STEPS_PER_EPOCH, summary={"test/acc": best - 0.01, "seconds": 60.0})
    store.close()
    return time.perf_counter() - t0


class _Dashboard:
    """`trainlab dashboard --port 0` in its own process (as a user runs it; a server thread in this process
    would share our GIL and add tens of ms to every request)."""

    def __init__(self, path: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "trainlab", "dashboard", "--db", str(path), "--port", "0"],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        match = re.search(r"http://\S+/", line)
        if match is None:
            self.proc.kill()
            raise SystemExit(f"the dashboard did not start: {line!r}")
        self.base = match.group(0)

    def __enter__(self) -> "_Dashboard":
        return self

    def cpu_s(self) -> float:
        return _cpu_s(self.proc.pid)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) a live process has used; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _chromium_cpu_s() -> float:
    """CPU seconds of every Chromium process started under this one (browser, renderer, GPU, utility)."""
    parents, names = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            names[int(entry.name)] = stat[stat.index("(") + 1:stat.rindex(")")]
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    me, total = os.getpid(), 0.0
    for pid, name in names.items():
        up, seen = parents.get(pid), 0
        while up and up != me and seen < 50:
            up, seen = parents.get(up), seen + 1
        if up == me and "chrom" in name.lower():
            total += _cpu_s(pid)
    return total


def _study_key(base: str) -> str:
    studies = httpx.get(base + "api/studies", timeout=120).json()["studies"]
    return next(s["key"] for s in studies if s["name"] == STUDY)


def measure_api(path: Path, repeats: int) -> dict:
    with _Dashboard(path) as server, httpx.Client(timeout=120) as client:
        base = server.base
        key = _study_key(base)
        url = base + f"api/studies/{key}"
        cpu0 = server.cpu_s()
        t0 = time.perf_counter()
        r = client.get(url)
        cold = time.perf_counter() - t0
        cold_cpu = server.cpu_s() - cpu0
        r.raise_for_status()
        runs = len(r.json()["runs"])
        # the background doctor, started by the first request: until every run has its badges
        t0 = time.perf_counter()
        while client.get(url).json()["doctor"]["pending"]:
            time.sleep(0.5)
        doctor = time.perf_counter() - t0 + cold
        warm = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            client.get(url).raise_for_status()
            warm.append(time.perf_counter() - t0)
        run_id = r.json()["runs"][0]["id"]
        t0 = time.perf_counter()
        metrics = client.get(base + f"api/runs/{run_id}/metrics")
        run_metrics = time.perf_counter() - t0
        metrics.raise_for_status()
        return {"api_cold_s": cold, "api_cold_server_cpu_s": cold_cpu, "api_warm_s": statistics.median(warm),
                "api_warm_all_s": warm,
                "api_bytes": len(r.content), "runs_in_answer": runs, "doctor_all_runs_s": doctor,
                "run_metrics_cold_s": run_metrics, "run_metrics_bytes": len(metrics.content)}


def measure_page(path: Path, screenshot: str | None) -> dict:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with _Dashboard(path) as server:  # a fresh process: its cache is cold
        base = server.base
        key = _study_key(base)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            out = {}
            for label in ("cold", "warm"):
                if label == "warm":  # the first visit started the doctor; let it finish, as a user would
                    while httpx.get(base + f"api/studies/{key}", timeout=120).json()["doctor"]["pending"]:
                        time.sleep(0.5)
                page.goto("about:blank")
                cpu0, browser0 = server.cpu_s(), _chromium_cpu_s()
                page.goto(base + f"#/study/{key}")
                page.wait_for_selector("body[data-ready=study]", timeout=120_000)
                out[f"page_{label}_server_cpu_s"] = server.cpu_s() - cpu0
                out[f"page_{label}_chromium_cpu_s"] = _chromium_cpu_s() - browser0
                out[f"page_{label}_s"] = page.evaluate("() => window.tlDrawnMs") / 1000
                out[f"page_{label}_first_screen_s"] = page.evaluate("() => window.tlFirstScreenMs") / 1000
                marks = page.evaluate("() => performance.getEntriesByType('mark').map(m => [m.name, m.startTime])")
                out[f"page_{label}_marks_s"] = {name: t / 1000 for name, t in marks}
                out["canvases"] = page.locator("#cards canvas").count()
            if screenshot:
                page.screenshot(path=screenshot)
            browser.close()
        out["console_errors"] = errors
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5, help="warm API requests (median reported)")
    parser.add_argument("--db", help="keep the synthesized store here (reused when it already holds the study)")
    parser.add_argument("--quick", action="store_true", help="20 runs x 1,000 steps, a smoke run")
    parser.add_argument("--screenshot", metavar="PNG", help="save the drawn study page here")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.steps = 20, 1000
    if not os.path.exists(CHROMIUM):
        print(f"{CHROMIUM} is missing (scripts/system-deps.sh installs it)", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.db) if args.db else Path(tmp) / "bench.db"
        synth_s = None
        existing = Store(path).runs(study=STUDY) if path.exists() else []
        if len(existing) != args.runs:
            if existing:
                raise SystemExit(f"{path} holds {len(existing)} runs of study {STUDY!r}, not {args.runs}; remove it")
            print(f"synthesizing {args.runs} runs x {args.steps} steps into {path} ...", flush=True)
            synth_s = synthesize(path, args.runs, args.steps)
        api = measure_api(path, args.repeats)
        page = measure_page(path, args.screenshot)
    load = os.getloadavg()
    result = {
        "load_average_start": load_start,
        "runs": args.runs, "steps": args.steps, "synthesize_s": synth_s, **api, **page,
        "targets": {"api_s": 1.0, "page_s": 3.0},
        "api_target_met": api["api_cold_s"] < 1.0, "page_target_met": page["page_cold_s"] < 3.0,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load_start:.1f} at the start, "
                   f"{load[0]:.1f} at the end",
        "note": "2-core machine shared with other engineers' jobs: absolute times are noisy",
    }
    table = [  # (measure, wall seconds, CPU seconds it cost (server + Chromium), target)
        ("study API, cold (reads + downsamples every run)", api["api_cold_s"], api["api_cold_server_cpu_s"], "< 1 s"),
        ("study API, warm (median)", api["api_warm_s"], None, ""),
        ("study page, first screen of charts drawn, cold", page["page_cold_first_screen_s"], None, ""),
        ("study page, every chart drawn, cold server cache", page["page_cold_s"],
         page["page_cold_server_cpu_s"] + page["page_cold_chromium_cpu_s"], "< 3 s"),
        ("study page, first screen of charts drawn, warm", page["page_warm_first_screen_s"], None, ""),
        ("study page, every chart drawn, warm", page["page_warm_s"],
         page["page_warm_server_cpu_s"] + page["page_warm_chromium_cpu_s"], ""),
        *[(f"  warm page: {name[3:]} at", t, None, "") for name, t in page["page_warm_marks_s"].items()],
        ("doctor badges for every run (background)", api["doctor_all_runs_s"], None, ""),
        ("run page metrics API, cold", api["run_metrics_cold_s"], None, ""),
    ]
    result["table"] = [{"measure": m, "wall_s": w, "cpu_s": c, "target": t} for m, w, c, t in table]
    print(f"\n{args.runs} runs x {args.steps} steps; study answer {api['api_bytes'] / 1e6:.2f} MB, "
          f"{page['canvases']} charts drawn; {result['machine']}")
    print(f"{'measure':52s} {'wall s':>7s} {'CPU s':>7s}  target")
    for label, wall, cpu, target in table:
        print(f"{label:52s} {wall:7.3f} {'' if cpu is None else f'{cpu:7.3f}':>7s}  {target}")
    print("CPU s: CPU time the server process (and, for pages, every Chromium process) spent on it; on a loaded "
          "machine wall time is CPU time stretched by waiting for a core")
    print(f"targets (wall): API {'met' if result['api_target_met'] else 'NOT met'}, "
          f"page {'met' if result['page_target_met'] else 'NOT met'}")
    if page["console_errors"]:
        print(f"console errors: {page['console_errors']}")
    name = "dashboard_quick.json" if args.quick else "dashboard.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
