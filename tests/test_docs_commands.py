"""Every `puhui …` command line in README.md and docs/*.md names a real command and only
options that command has: a reader copying one never meets "No such option"."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from puhui.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
COMMAND = re.compile(r"(?:\.venv/bin/)?puhui\s")
INLINE_COMMAND = re.compile(r"`((?:\.venv/bin/)?puhui [^`]+)`")


def command_lines(text: str) -> list[str]:
    """Command lines in code blocks (continuations joined) and in inline code."""
    found = []
    for block in FENCE.findall(text):
        for raw in block.replace("\\\n", " ").splitlines():
            line = raw.strip().removeprefix("$ ")
            if COMMAND.match(line):
                found.append(line)
    found += INLINE_COMMAND.findall(FENCE.sub("", text))
    return found


def problems(line: str) -> list[str]:
    """What is wrong with one documented command line ([optional] parts, `a|b` alternatives,
    `…` and a trailing `# comment` or `&` allowed)."""
    line = re.sub(r"\s+#.*$|\s*&\s*$", "", line)
    tokens = re.sub(r"[\[\]…]", " ", line).split()
    command: Any = typer.main.get_command(app)
    path = ["puhui"]
    rest = tokens[1:]
    while rest and hasattr(command, "commands") and not rest[0].startswith("-"):
        names = rest[0].split("|")
        missing = [name for name in names if name not in command.commands]
        if missing:
            return [f"{' '.join(path)} has no command {missing[0]!r}"]
        command = command.commands[names[0]]
        path.append(rest.pop(0))
    options = {"--help"}
    for param in command.params:
        options.update(getattr(param, "opts", []), getattr(param, "secondary_opts", []))
    return [
        f"{' '.join(path)} has no option {name}"
        for token in rest
        if token.startswith("--") and (name := token.split("=")[0].rstrip(",.;:)")) not in options
    ]


def test_the_checker_sees_mistakes() -> None:
    assert problems("puhui serve --port 8000 --risk-dir DIR  # a comment --nonsense") == []
    assert problems("puhui risk lists add|remove|show [--json]") == []
    assert problems("puhui serve --porte 8000") == ["puhui serve has no option --porte"]
    assert problems("puhui risk casez list") == ["puhui risk has no command 'casez'"]


def test_the_pages_have_commands() -> None:
    assert sum(len(command_lines(page.read_text(encoding="utf-8"))) for page in PAGES) > 30


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_documented_commands_exist(page: Path) -> None:
    wrong = {
        line: found
        for line in command_lines(page.read_text(encoding="utf-8"))
        if (found := problems(line))
    }
    assert not wrong, f"{page.relative_to(ROOT)}: {wrong}"
