"""deploy/crontab's lines run as cron runs them (cronie / Vixie cron, /etc/cron.d format), for the tests.

What cron does with a line ``m h dom mon dow user command``: the command runs as ``$SHELL -c command`` (SHELL is
/bin/sh unless the crontab sets it) in the user's home directory, in an environment of only SHELL, HOME, LOGNAME,
USER and PATH=/usr/bin:/bin, overridden by the crontab's ``NAME=value`` lines (taken literally: no expansion).
The first unescaped ``%`` ends the command (the rest, with further ``%`` as newlines, is its standard input) and
``\\%`` becomes ``%``.
"""
from __future__ import annotations

import getpass
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CRONTAB = ROOT / "deploy" / "crontab"
_ASSIGNMENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class CronEntry:
    schedule: tuple[str, str, str, str, str]
    user: str
    command: str  # as written in the crontab (\% not yet unescaped)


def read_crontab(text: str) -> tuple[dict[str, str], list[CronEntry]]:
    """The variables and the entries of an /etc/cron.d file."""
    variables: dict[str, str] = {}
    entries = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assignment = _ASSIGNMENT.match(line)
        if assignment and not line.split()[0][0].isdigit() and line.split()[0] != "*":
            value = assignment.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]  # cron strips one pair of matching quotes
            variables[assignment.group(1)] = value
            continue
        fields = line.split(None, 6)
        if len(fields) != 7:
            raise ValueError(f"not a cron.d entry (5 time fields, user, command): {line!r}")
        entries.append(CronEntry(tuple(fields[:5]), fields[5], fields[6]))
    return variables, entries


def split_percent(command: str) -> tuple[str, str]:
    """``(command, stdin)`` as cron cuts a command at its first unescaped ``%``; ``\\%`` becomes ``%``."""
    out, stdin, k = [], None, 0
    while k < len(command):
        ch = command[k]
        if ch == "\\" and k + 1 < len(command) and command[k + 1] == "%":
            (out if stdin is None else stdin).append("%")
            k += 2
            continue
        if ch == "%":
            if stdin is None:
                stdin = []
            else:
                stdin.append("\n")
        else:
            (out if stdin is None else stdin).append(ch)
        k += 1
    return "".join(out), "".join(stdin or [])


def cron_environment(variables: dict[str, str], home: Path) -> dict[str, str]:
    """What cron gives a job: its minimal environment, then the crontab's variables."""
    user = getpass.getuser()
    env = {"SHELL": "/bin/sh", "HOME": str(home), "LOGNAME": user, "USER": user, "PATH": "/usr/bin:/bin"}
    env.update(variables)
    return env


def run_entry(entry: CronEntry, variables: dict[str, str], home: Path,
              timeout_s: float = 1800) -> subprocess.CompletedProcess:
    """Run one entry now, as cron would, and wait for it."""
    command, stdin = split_percent(entry.command)
    env = cron_environment(variables, home)
    return subprocess.run([env["SHELL"], "-c", command], env=env, cwd=home, input=stdin, capture_output=True,
                          text=True, timeout=timeout_s)
