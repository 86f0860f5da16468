"""The CLI and the spark-submit files start, parse their arguments and report bad input kindly.

Each command is also run for real, end to end, in tests/test_end_to_end.py.
"""
import importlib.util
import subprocess
import sys

import pytest

from skyclass import cli
from skyclass.config import REPO_ROOT

JOB_FILES = sorted((REPO_ROOT / "jobs").glob("*.py"))
COMMANDS = [*cli.COMMANDS, "standin"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert f"skyclass {command}" in out
    if command != "standin":
        assert "--conf" in out and "--set" in out


@pytest.mark.parametrize("path", JOB_FILES, ids=[p.stem for p in JOB_FILES])
def test_every_job_file_runs_its_command(path, capsys):
    spec = importlib.util.spec_from_file_location(f"job_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    command = capsys.readouterr().out.split("usage: skyclass ")[1].split()[0]
    assert command in cli.COMMANDS


def test_every_command_has_a_job_file():
    commands = set()
    for path in JOB_FILES:
        text = path.read_text()
        commands.add(text.split('job_entry("')[1].split('"')[0])
    assert commands == set(cli.COMMANDS) - {"demo"}


def test_bad_config_value_exits_2_naming_the_key(capsys):
    code = cli.main(["train", "--set", "train.epochs=-1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.epochs must be > 0" in err and "local.yaml" in err


def test_flags_become_config_overrides():
    args = cli.build_parser().parse_args(["score", "--rescore", "--catalog", "catalog", "--run-date", "2026-01-02"])
    assert sorted(cli._overrides_from_flags(args)) == ["score.catalog=catalog", "score.rescore=true",
                                                       "score.run_date=2026-01-02"]


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "skyclass.cli", "--help"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0 and "extract" in done.stdout and "score" in done.stdout
