"""A finding every run of a study shares is drawn once in the study's header, not as a badge on each run,
in a real headless Chromium over a real SQLite store diagnosed by the real doctor. A study whose runs
differ gets no header block and keeps each run's badges."""

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from trainlab.doctor.diagnose import diagnose_run
from trainlab.store import Store

STEPS_PER_EPOCH = 40


def _write(store, study, name, lr, still_rising, *, epochs=8, seed=0):
    """A finished run whose curves the doctor reads as still learning at the end (`still_rising`: val and
    train accuracy climb every epoch, the loss falls steadily) or as flat at a constant rate (plateau)."""
    rng = np.random.default_rng(seed)
    run = store.create_run(name=name, hparams={"lr": lr, "epochs": epochs, "model": "mlp",
                                               "early_stop_metric": "val/acc"}, study=study, seed=seed)
    steps = np.arange(epochs * STEPS_PER_EPOCH)
    if still_rising:
        loss = 2.3 - 1.5 * steps / len(steps) + 0.05 * rng.standard_normal(len(steps))
    else:
        loss = 0.2 + 2.1 * np.exp(-steps / (0.15 * len(steps))) + 0.03 * rng.standard_normal(len(steps))
    rows = [(int(t), int(t // STEPS_PER_EPOCH + 1), key, float(v))
            for t, v in zip(steps, loss) for key, v in (("train/loss", v), ("lr", lr))]
    for e in range(1, epochs + 1):
        if still_rising:
            train, val = 0.3 + 0.07 * e, 0.28 + 0.07 * e
        else:
            train, val = 0.96 - 0.5 * math.exp(-2 * e), 0.9 - 0.5 * math.exp(-2 * e)
        t = e * STEPS_PER_EPOCH - 1
        rows += [(t, e, "train/acc", train), (t, e, "val/acc", val), (t, e, "val/loss", 2.3 * (1 - val))]
    store.log_metrics(run, rows, epochs=epochs)
    best = 0.28 + 0.07 * epochs if still_rising else 0.9 - 0.5 * math.exp(-2 * epochs)
    store.finish_run(run, "completed", best_metric=best, best_epoch=epochs, epochs=epochs,
                     summary={"num_classes": 10})
    return run


@pytest.fixture()
def studies(tmp_path):
    path = tmp_path / "shared.db"
    store = Store(path)
    short = [_write(store, "short", f"trial-{i}", 10.0 ** -(i + 2), True, seed=i) for i in range(3)]
    mixed = [_write(store, "mixed", "rising", 1e-3, True, seed=7), _write(store, "mixed", "flat", 1e-3, False, seed=8)]
    found = {r: [f.name for f in diagnose_run(store, r).findings] for r in short + mixed}
    # what the real doctor says, so the page is checked against it: every "short" run still learning, the
    # "mixed" runs one each, different
    assert all(found[r] == ["train_longer"] for r in short), found
    assert found[mixed[0]] == ["train_longer"] and found[mixed[1]] and "train_longer" not in found[mixed[1]], found
    store.close()
    return {"path": path, "short": short, "mixed": mixed, "found": found}


@pytest.mark.slow
def test_a_finding_every_run_shares_is_drawn_once_in_the_study_header(studies, tmp_path, chromium_page):
    from playwright.sync_api import expect

    from trainlab.dashboard import Server, bind, create_app
    from trainlab.dashboard.server import allowed_hosts

    server = Server(create_app(studies["path"], allowed_hosts("127.0.0.1"), poll_s=0.3), bind("127.0.0.1", 0)).start()
    base = f"http://127.0.0.1:{server.port}/"
    try:
        page, errors = chromium_page(viewport={"width": 1280, "height": 900})
        page.goto(base + "#/")
        page.wait_for_selector("body[data-ready=studies]")
        page.click("#studies a:text-is('short')")
        page.wait_for_selector("body[data-ready=study]")
        # the first answer comes before the doctor: the header appears once it has diagnosed every run
        header = page.locator("#shared-findings")
        expect(header.locator("li")).to_have_count(1, timeout=30_000)
        expect(page.locator("#live")).to_have_text("", timeout=30_000)
        item = header.locator("li[data-finding=train_longer]")
        assert item.locator(".badge").inner_text() == "train_longer"
        text = item.inner_text()
        assert "all 3 runs" in text and "still learning at the end of the run" in text
        assert "try: train longer (more epochs)" in text
        # and not as a problem on each run: no card, no table row carries the badge
        assert page.locator("#cards .card").count() == 3
        assert page.locator("#cards .badge").count() == 0
        assert page.locator("#runs-table .badge").count() == 0
        assert page.locator("#cards .card .pill").all_inner_texts() == ["completed"] * 3
        page.screenshot(path=str(tmp_path / "shared.png"), full_page=True)

        # a study seen again comes from the doctor's cache: the header is there on the first drawing
        page.goto(base + "#/")
        page.wait_for_selector("body[data-ready=studies]")
        page.click("#studies a:text-is('short')")
        page.wait_for_selector("body[data-ready=study]")
        assert header.locator("li").count() == 1

        # runs that differ: no header block, each run keeps its own badges
        page.goto(base + "#/")
        page.wait_for_selector("body[data-ready=studies]")
        page.click("#studies a:text-is('mixed')")
        page.wait_for_selector("body[data-ready=study]")
        expect(page.locator("#live")).to_have_text("", timeout=30_000)
        rising, flat = studies["mixed"]
        expect(page.locator(f'.card[data-run="{rising}"] .badge')).to_have_text(["train_longer"])
        expect(page.locator(f'.card[data-run="{flat}"] .badge')).to_have_text(studies["found"][flat])
        assert page.locator("#shared-findings li").count() == 0
        assert not page.locator("#shared-findings").is_visible()
        page.screenshot(path=str(tmp_path / "mixed.png"), full_page=True)
        assert errors == []  # checked while the server is up: the page polls it
    finally:
        server.stop()
    shots = os.environ.get("TRAINLAB_SCREENSHOTS")
    if shots:  # keep them to look at
        for name in ("shared.png", "mixed.png"):
            shutil.copy(tmp_path / name, Path(shots) / name)
