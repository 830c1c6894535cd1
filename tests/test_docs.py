"""The docs: the site builds with no broken link, the README's links resolve, and every `trainlab ...`
command shown in a code block is one the real argument parser accepts (a few cheap ones are run)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from trainlab.cli import parse

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Commands shown with placeholders the parser cannot accept, each with why. Keep it short: prefer a
# concrete example (`trainlab diagnose 7`) to a synopsis (`trainlab diagnose RUN`).
SKIP: dict[str, str] = {}

# Cheap commands actually run, in an empty folder.
RUN_END_TO_END = [
    "trainlab schedule cosine --lr 0.1 --steps 100 --json",
    "trainlab train --print-config",
    "trainlab runs",
]


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^ *```[^\n]*\n(.*?)^ *```", text, re.S | re.M)


def shown_commands(text: str) -> list[str]:
    """`trainlab ...` lines of the code blocks (a `$ ` prompt dropped, `\\` continuations joined), and
    the trainlab part of `torchrun ... -m trainlab ...` / `python -m trainlab ...` lines."""
    found = []
    for block in code_blocks(text):
        lines = block.split("\n")
        i = 0
        while i < len(lines):
            line = lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            line = line.strip().removeprefix("$ ")
            module = re.match(r"(?:.*\s)?-m trainlab (.*)", line)
            if line.startswith("trainlab "):
                found.append(line)
            elif module:
                found.append("trainlab " + module.group(1))
    return found


def all_commands() -> list[tuple[str, str]]:
    return [(page.relative_to(ROOT).as_posix(), cmd) for page in PAGES for cmd in shown_commands(page.read_text())]


def test_commands_are_found():
    cmds = all_commands()
    assert len(cmds) > 60, "the extraction found too few commands: did the code-block syntax change?"
    pages = {page for page, _ in cmds}
    assert {"README.md", "docs/training.md", "docs/search.md", "docs/data-parallel.md"} <= pages
    assert not set(SKIP) - {cmd for _, cmd in cmds}, "SKIP names a command no page shows any more"


def _argv(command: str) -> list[str]:
    """The arguments of a shown `trainlab ...` line, up to its first shell operator (`| jq`, `> out.json`)."""
    lex = shlex.shlex(command, posix=True, punctuation_chars=True)
    lex.whitespace_split, lex.commenters = True, "#"
    words = []
    for word in lex:
        if word and set(word) <= set("|&;<>()"):
            break
        words.append(word)
    return words[1:]


@pytest.mark.parametrize("page,command", all_commands())
def test_shown_command_parses(page, command):
    if command in SKIP:
        pytest.skip(SKIP[command])
    argv = _argv(command)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = parse(argv)  # as main() reads them: global options anywhere, positionals after options
    except SystemExit:
        pytest.fail(f"{page}: `{command}` is refused by trainlab's parser: {err.getvalue().strip()}")
    assert callable(args.fn)


def test_readme_relative_links_resolve():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [link for link in links if not re.match(r"[a-z]+:", link) and not link.startswith("#")]
    assert len(relative) >= 10
    broken = [link for link in relative if not (ROOT / link.split("#")[0]).exists()]
    assert not broken, f"README.md links to missing files: {broken}"


def test_readme_keeps_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = code_blocks(text)[0]
    assert first_block.split("\n")[0].startswith("make run ")
    assert first_block.split("\n")[1].startswith("make test ")
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_mkdocs_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="pip install -e '.[docs]'")
    pytest.importorskip("material", reason="pip install -e '.[docs]'")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "benchmarks" / "index.html").exists()
    # the benchmark figures outside docs/ reach the site
    html = (tmp_path / "site" / "benchmarks" / "index.html").read_text()
    for src in re.findall(r'<img[^>]*src="([^"]+)"', html):
        assert (tmp_path / "site" / "benchmarks" / src).resolve().exists(), src


def test_mkdocs_strict_catches_a_broken_link(tmp_path):
    """The build above proves something only if a broken link would fail it."""
    pytest.importorskip("material", reason="pip install -e '.[docs]'")
    import shutil

    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "mkdocs_hooks.py", tmp_path / "scripts" / "mkdocs_hooks.py")
    page = tmp_path / "docs" / "store.md"
    page.write_text(page.read_text() + "\nSee [nowhere](no-such-page.md) and [there](training.md#no-such-anchor).\n")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                         timeout=120)
    assert out.returncode != 0
    assert "no-such-page.md" in out.stderr and "no-such-anchor" in out.stderr


def _trainlab(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "trainlab", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cheap_commands_run(tmp_path):
    shown = {cmd.split("#")[0].strip() for _, cmd in all_commands()}
    for command in RUN_END_TO_END:
        assert command in shown, f"`{command}` is no longer shown in the docs"
    schedule = _trainlab(shlex.split(RUN_END_TO_END[0])[1:], tmp_path)
    assert schedule.returncode == 0, schedule.stderr
    lrs = json.loads(schedule.stdout)
    assert lrs  # the shape belongs to the CLI; that it is JSON is what the docs promise
    config = _trainlab(shlex.split(RUN_END_TO_END[1])[1:], tmp_path)
    assert config.returncode == 0, config.stderr
    assert re.search(r"^lr: ", config.stdout, re.M) and re.search(r"^task: mnist1d", config.stdout, re.M)
    missing = _trainlab(shlex.split(RUN_END_TO_END[2])[1:], tmp_path)  # read-only: no store is created
    assert missing.returncode == 2 and "no store at" in missing.stderr and missing.stderr.count("\n") == 1
    from trainlab.store import Store

    Store(str(tmp_path / "trainlab.db"))  # an empty store, as the first `trainlab train` leaves one
    runs = _trainlab(shlex.split(RUN_END_TO_END[2])[1:], tmp_path)
    assert runs.returncode == 0 and runs.stdout == "" and "no train runs" in runs.stderr, runs.stderr
