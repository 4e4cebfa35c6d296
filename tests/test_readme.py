"""The README's commands are real: every `routecar ...` line parses with today's CLI, and
every repository path it names exists (issue 14: `--request req.json` named no shipped file)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from routecar.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
LINES = [line for block in BLOCKS for line in block.splitlines() if line.strip()]


def _commands() -> list[str]:
    found = []
    for line in LINES:
        code = line.split("  #", 1)[0].strip()
        found += re.findall(r"\$\((routecar [^)]*)\)", code)
        if code.startswith("routecar "):
            found.append(code)
    return found


def test_the_readme_has_commands_to_check():
    assert len(_commands()) >= 15


@pytest.mark.parametrize("command", _commands())
def test_routecar_commands_parse(command):
    words = shlex.split(command)
    if words[1:] == ["--version"]:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(words[1:])
        assert e.value.code == 0
        return
    args = build_parser().parse_args(words[1:])  # argparse exits (fails the test) on a bad option
    assert args.command == words[1]
    for name in ("policy", "request", "tenants", "rules"):  # files the command reads
        value = getattr(args, name, None)
        if value and value != "-" and not value.lstrip().startswith(("{", "[")) and "://" not in value:
            assert (ROOT / value).is_file(), f"{command}: {value} is not in the repository"


@pytest.mark.parametrize("path", sorted({w for line in LINES for w in re.findall(
    r"(?<![\w/.~-])((?:policies|scripts|addon|docs|tests)/[\w./-]+)", line)}))
def test_named_paths_exist(path):
    assert (ROOT / path).exists(), path
