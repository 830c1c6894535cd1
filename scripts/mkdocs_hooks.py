"""mkdocs hooks: the benchmark figures live in benchmarks/results/, beside the JSON they are drawn from,
outside docs/. Pages link them as `../benchmarks/results/NAME.png` (right on GitHub too); the site gets
a copy of each figure and the link is pointed at it."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
PREFIX = "../benchmarks/results/"
SITE_DIR = "benchmark-results/"


def on_files(files, config):
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, SITE_DIR + png.name, abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    return markdown.replace("](" + PREFIX, "](" + SITE_DIR)
