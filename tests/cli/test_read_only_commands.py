"""Read-only commands (runs, plot, diagnose, dashboard, ensemble, search report) never create, migrate or
change the journal mode of a database file: a missing file, another application's SQLite file and a text
file are each one line (exit 2), and every file's bytes and journal mode are the same afterwards. Stored
strings with control characters are printed escaped."""

import hashlib
import sqlite3

import pytest

from trainlab.cli import main
from trainlab.store import MetricBuffer, Store

READ_ONLY = [
    ["runs"],
    ["runs", "show", "1"],
    ["plot", "1", "-o", "{tmp}/curves.png"],
    ["diagnose", "1"],
    ["ensemble", "--runs", "1"],
    ["search", "report", "some-study", "-o", "{tmp}/report"],
    ["dashboard", "--port", "0"],
]
IDS = [" ".join(c[:2]) for c in READ_ONLY]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def journal_mode(path) -> str:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]


def run(argv, db, tmp_path, capsys):
    rc = main([a.format(tmp=tmp_path) for a in argv] + ["--db", str(db)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def foreign(tmp_path):
    """Another application's SQLite file, in the default rollback-journal mode."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("INSERT INTO notes (text) VALUES ('keep me')")
    return path


@pytest.mark.parametrize("argv", READ_ONLY, ids=IDS)
def test_foreign_sqlite_file_is_refused_and_unchanged(argv, foreign, tmp_path, capsys):
    before, mode = digest(foreign), journal_mode(foreign)
    assert mode == "delete"
    rc, out, err = run(argv, foreign, tmp_path, capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"trainlab: error: db: 'sqlite:///{foreign}' holds no trainlab store"), err
    assert digest(foreign) == before and journal_mode(foreign) == "delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]  # no -wal, no lock file, no output


@pytest.mark.parametrize("argv", READ_ONLY, ids=IDS)
def test_text_file_is_refused_and_unchanged(argv, tmp_path, capsys):
    path = tmp_path / "notes.db"
    path.write_text("not a database\n")
    before = digest(path)
    rc, out, err = run(argv, path, tmp_path, capsys)
    assert rc == 2 and err.count("\n") == 1
    assert err == f"trainlab: error: db: cannot open 'sqlite:///{path}': file is not a database\n"
    assert digest(path) == before


@pytest.mark.parametrize("argv", READ_ONLY, ids=IDS)
def test_missing_file_is_one_line_and_not_created(argv, tmp_path, capsys):
    path = tmp_path / "typo.db"
    rc, out, err = run(argv, path, tmp_path, capsys)
    assert rc == 2 and err == f"trainlab: error: db: no store at {path} (train something first, or pass --db)\n"
    assert not path.exists() and list(tmp_path.iterdir()) == []


EVIL_NAME = "\x1b[31mred\x1b[0m\u202eevil\x07"


@pytest.fixture
def store_file(tmp_path):
    """A trainlab store (WAL) with one run whose name and study hold terminal escapes; checkpointed and
    closed, so that its main file holds everything."""
    path = tmp_path / "runs.db"
    store = Store(path)
    run_id = store.create_run(name=EVIL_NAME, hparams={"model": "mlp", "task": "mnist1d\x1b]0;title\x07"},
                              seed=0, study="st\x1b[2Judy")
    buf = MetricBuffer(store, run_id)
    for step in range(60):
        buf.add(step, step // 20 + 1, "train/loss", 2.3 / (1 + step / 10))
    for epoch in (1, 2, 3):
        buf.add(epoch * 20 - 1, epoch, "val/acc", 0.3 * epoch)
        buf.add(epoch * 20 - 1, epoch, "val/loss", 2.0 / epoch)
        buf.add(epoch * 20 - 1, epoch, "train/acc", 0.3 * epoch)
    buf.flush()
    store.finish_run(run_id, "completed", reason="done\nsecond line", best_metric=0.9, best_epoch=3, epochs=3)
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.mark.parametrize("argv", READ_ONLY[:4] + READ_ONLY[5:6], ids=IDS[:4] + IDS[5:6])
def test_trainlab_store_is_read_without_a_write(argv, store_file, tmp_path, capsys):
    before, mode = digest(store_file), journal_mode(store_file)
    assert mode == "wal"
    rc, out, err = run(argv, store_file, tmp_path, capsys)
    if argv[0] == "search":  # a store with no search in it: one line, and no Optuna tables added
        assert rc == 2 and err == f"trainlab: error: storage: 'sqlite:///{store_file}' holds no search study " \
                                  "(no Optuna tables)\n"
    else:
        assert rc == 0, err
    assert digest(store_file) == before and journal_mode(store_file) == "wal"
    with sqlite3.connect(f"file:{store_file}?mode=ro", uri=True) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not any(t.startswith(("studies", "trials", "alembic")) for t in tables)
    assert "\x1b" not in out + err and "\u202e" not in out + err and "\x07" not in out + err


def test_control_characters_are_escaped(store_file, tmp_path, capsys):
    rc, out, _ = run(["runs"], store_file, tmp_path, capsys)
    assert rc == 0 and "\\x1b[31mred\\x1b[0m\\u202eevil\\x07" in out and "st\\x1b[2Judy" in out
    rc, out, _ = run(["runs", "show", "1"], store_file, tmp_path, capsys)
    assert rc == 0 and "name         \\x1b[31mred\\x1b[0m\\u202eevil\\x07" in out
    assert "reason       done\\nsecond line" in out and "  task: mnist1d\\x1b]0;title\\x07" in out
    rc, out, _ = run(["diagnose", "1"], store_file, tmp_path, capsys)
    assert rc == 0 and out.startswith("run 1: \\x1b[31mred\\x1b[0m\\u202eevil\\x07 (completed: done\\nsecond line;")
    for text in (out,):
        assert not any(ord(c) < 32 and c != "\n" for c in text)


def test_printable_leaves_text_alone():
    from trainlab.cli.common import printable

    assert printable("résumé 中文 lr=0.1 a\\b") == "résumé 中文 lr=0.1 a\\b"
    assert printable("\x00\x7f\x9b\u2028\u2066") == "\\x00\\x7f\\x9b\\u2028\\u2066"
    assert printable(3) == "3"
