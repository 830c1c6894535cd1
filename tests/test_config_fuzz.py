"""Property-based fuzzing (hypothesis) of everything a user types or writes before training: config mappings,
YAML text, --set overrides and search-space specs. Every generated input either loads or raises
ConfigError with one line; through the command line, exit 0 or 2 with one stderr line, never a traceback
or a hang. Plus the named attacks: the billion-laughs YAML and numeric overflow, in real subprocesses."""

import contextlib
import io
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainlab.cli import main
from trainlab.config import Config, ConfigError, load_config, make_config, parse_override, read_yaml_mapping
from trainlab.search.space import FUNCTIONS, Space, parse_space

FUZZ = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = sorted(Config.model_fields)

numbers = (st.integers(min_value=-(10**30), max_value=10**30) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([0, 1, -1, 2**31, 2**63, 10**400, 1e308, -1e308, 5e-324]))
scalars = st.none() | st.booleans() | numbers | st.text(max_size=12)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=12)
keys = st.sampled_from(FIELDS) | st.text(max_size=10)
mappings = st.dictionaries(keys, values, max_size=6)


def one_line(err: Exception) -> str:
    text = str(err)
    assert text and "\n" not in text and "\r" not in text, repr(text)
    assert ": " in text, text  # names a field (or "config"/"space") first
    return text


@FUZZ
@given(mappings)
def test_any_mapping_makes_a_config_or_one_line(data):
    try:
        hp = make_config(data)
    except ConfigError as err:
        one_line(err)
        return
    for name, value in hp.model_dump().items():  # what loads is within the bounds: finite and not huge
        if isinstance(value, float):
            assert math.isfinite(value) and abs(value) <= 1e12, (name, value)
        if isinstance(value, int) and not isinstance(value, bool):
            assert abs(value) <= 10**12, (name, value)


@FUZZ
@given(mappings)
def test_any_yaml_config_file_loads_or_one_line(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        try:
            load_config(path)
        except ConfigError as err:
            one_line(err)


@FUZZ
@given(st.text(max_size=200) | st.text(alphabet="[]{}&*!|>-:,'\"\n #ab01.e+", max_size=200))
def test_any_yaml_text_is_a_mapping_or_one_line(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            loaded = read_yaml_mapping(path, "config", "key: value")
        except ConfigError as err:
            one_line(err)
            return
        assert isinstance(loaded, dict) and all(isinstance(k, str) for k in loaded)


overrides = (st.builds(lambda k, v: f"{k}={v}", keys, st.text(max_size=30))
             | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(FIELDS), numbers.map(str))
             | st.text(max_size=40))


@FUZZ
@given(st.lists(overrides, max_size=4))
def test_any_overrides_load_or_one_line(items):
    try:
        load_config(None, items)
    except ConfigError as err:
        one_line(err)


tokens = (numbers.map(str) | st.sampled_from(["log", "adam", "'sgd'", '"x,y"', "true", "null", "", " ", "1e-4",
                                              "-0", "nan", "inf", "1e999", "9" * 5000])
          | st.text(alphabet="abc(),'\" 0123456789.e-", max_size=8))
calls = st.builds(lambda fn, args: f"{fn}({', '.join(args)})",
                  st.sampled_from(FUNCTIONS) | st.text(max_size=6), st.lists(tokens, max_size=5))
specs = calls | st.text(max_size=30) | st.sampled_from(["loguniform(1e-4, 1e-1)", "int(8, 64, log)",
                                                       "choice(adam, sgd)", "logspace(1e-4, 1, 9999)"])
spaces = st.dictionaries(keys, specs | values, min_size=0, max_size=4)


@FUZZ
@given(spaces)
def test_any_space_parses_or_one_line(data):
    try:
        space = parse_space(data)
    except ConfigError as err:
        one_line(err)
        return
    assert isinstance(space, Space) and space.names == [str(k) for k in data]
    try:
        grid = space.grid()
    except ConfigError as err:
        one_line(err)
        return
    assert math.prod(len(v) for v in grid.values()) <= 1_000_000


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@FUZZ
@given(st.lists(overrides, min_size=1, max_size=3))
def test_cli_overrides_exit_0_or_2_with_one_line(items):
    rc, out, err = run_cli(["train", "--print-config", *[f"--set={s}" for s in items]])
    assert rc in (0, 2)
    if rc == 2:
        assert err.startswith("trainlab: error: ") and err.count("\n") == 1, err
        assert "\x1b" not in err  # control characters a user typed are shown escaped
    else:
        assert yaml.safe_load(out) and not err


class _Parsed(Exception):
    """Raised instead of creating the study: the space was accepted, nothing trains in this test."""


@FUZZ
@given(spaces)
def test_cli_search_space_exits_2_with_one_line_or_is_accepted(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "space.yaml"
        try:
            path.write_text(yaml.safe_dump(data, allow_unicode=True))
        except yaml.YAMLError:
            return
        with mock.patch("trainlab.preflight.load_checked_task"), \
                mock.patch("trainlab.search.runner._prepare", side_effect=_Parsed):
            try:
                rc, _, err = run_cli(["search", "--space", str(path), "--db", str(Path(tmp) / "s.db"), "--quiet"])
            except _Parsed:
                return
        assert rc == 2 and err.startswith("trainlab: error: ") and err.count("\n") == 1, err
        assert not (Path(tmp) / "s.db").exists()


# --- the named attacks, as a user meets them: real processes ----------------------------------------------

BOMB = "\n".join([
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    *[f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")],
]) + "\n"


def cli(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(Path(__file__).parents[1] / "src"),
                                                                     os.environ.get("PYTHONPATH")] if p)}
    # the timeout guards against a hang (the bug this tests); it is not a speed claim
    return subprocess.run([sys.executable, "-m", "trainlab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


CASES = [  # (argv, the one line it must print)
    (["train", "bomb.yaml", "--print-config"], "config: the YAML expands to more than 100000 values"),
    (["search", "--space", "space.yaml", "--db", "s.db"], "space: the YAML expands to more than 100000 values"),
    (["train", "--set", "lr=1e308", "--db", "t.db"], "lr: input should be less than or equal to 1000000, got 1e+308"),
    (["train", "--set", "epochs=99999999999999999999", "--db", "t.db"], "epochs: input should be less than or equal"),
    (["check", "init", "--set", "batch_size=1e400", "--db", "t.db"], "batch_size: input should be a finite number"),
    (["train", "--set", "seed=18446744073709551616", "--db", "t.db"], "seed: input should be less than or equal to 4294967295"),
    (["search", "--space", "space.yaml", "--set", "width=1e30", "--db", "s.db"], "width: "),
    (["search", "--space", "space.yaml", "--heartbeat-s", str(10**20), "--db", "s.db"], "heartbeat_s: must be an integer in"),
    (["schedule", "cosine", "--steps", str(10**12)], "--steps: must be in [1, 10000000], got 1000000000000"),
    (["schedule", "cosine", "--lr", "1e308"], "--lr: must be in (0, 1e6], got 1e+308"),
    (["recipe", "--budget", "1e308", "--db", "t.db"], "--budget: must be a positive number of minutes"),
]


def write_bombs(tmp_path):
    assert BOMB.count("\n") == 9
    (tmp_path / "bomb.yaml").write_text(BOMB)
    (tmp_path / "space.yaml").write_text(BOMB.replace("a: &a", "lr: &a").replace("i: &i", "dropout: &i"))


def test_billion_laughs_and_overflow_are_one_line_exit_2(tmp_path, monkeypatch):
    write_bombs(tmp_path)
    monkeypatch.chdir(tmp_path)
    for argv, message in CASES:
        rc, _, err = run_cli(argv)
        assert rc == 2 and err.count("\n") == 1 and err.startswith(f"trainlab: error: {message}"), (argv, err)
    assert not (tmp_path / "t.db").exists() and not (tmp_path / "s.db").exists()


@pytest.mark.slow
def test_billion_laughs_and_overflow_in_a_real_process(tmp_path):
    write_bombs(tmp_path)
    for argv, message in [CASES[0], CASES[2]]:
        r = cli(*argv, cwd=tmp_path)
        assert r.returncode == 2, (argv, r.stderr[-2000:])
        assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"trainlab: error: {message}"), (argv, r.stderr)
    assert not (tmp_path / "t.db").exists()


def test_self_referencing_deep_and_long_yaml_are_one_line(tmp_path):
    for text, message in [("a: &a [*a]\n", "refers to itself"),
                          ("x: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
                          ("epochs: " + "7" * 5000 + "\n", "a value in the YAML cannot be read"),
                          ("lr: 1e-3\n" + "# padding\n" * 200_000, "more than the 1000000 a config may hold")]:
        path = tmp_path / "c.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=f"^config: .*{message}") as info:
            load_config(path)
        one_line(info.value)


def test_a_bomb_in_a_known_field_fails_before_anything_expands_it(tmp_path):
    # pydantic's error for `task` would repr the 9**9-string value (it hung before the bound)
    lines = [f"_{line}" for line in BOMB.splitlines()[:-1]] + [BOMB.splitlines()[-1].replace("i: &i", "task:")]
    (tmp_path / "c.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="^config: the YAML expands to more than 100000 values"):
        load_config(tmp_path / "c.yaml")


def test_override_values_are_bounded_too():
    with pytest.raises(ConfigError, match="^milestones_epochs: the YAML expands to more than"):
        parse_override("milestones_epochs={" + BOMB.strip().replace("\n", ", ") + "}")  # the bomb on one line


def test_names_with_control_characters_are_refused():
    with pytest.raises(ConfigError, match=r"^task: must not hold control characters, got 'x\\x1b\[2J\.py:build'$"):
        make_config({"task": "x\x1b[2J.py:build"})
    with pytest.raises(ConfigError, match=r"^early_stop_metric: choice\('val/acc', 'val\x07'\): must not hold control"):
        parse_space({"early_stop_metric": "choice('val/acc', 'val\x07')"})
