"""The documentation names only commands, options and settings that exist.

Every ``provline ...`` command in a code block or code span of README.md, docs/ and the READMEs
under deploy/ must be a real subcommand with real options, and every ``PROVLINE_SECTION__NAME``
a real setting, so a renamed command or variable fails here instead of misleading an operator.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main

from provline.cli import app, settings_classes
from provline.config import unknown_variable

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "deploy").rglob("README.md")])
VARIABLE = re.compile(r"\bPROVLINE_[A-Z0-9]+__[A-Z0-9_]*[A-Z0-9]\b")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
SPAN = re.compile(r"`([^`\n]+)`")
# `provline` as a command: at the start, or after a path, a space, a `$(` or a shell separator
COMMAND = re.compile(r"(?:^|(?<=[\s/(;&|]))provline +(?P<rest>[a-z][^\n]*)")
SEPARATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "#"}


def code_of(text: str) -> list[str]:
    """The lines of every fenced block, then every inline code span outside them."""
    lines = [line for block in FENCE.findall(text) for line in block.splitlines()]
    return lines + SPAN.findall(FENCE.sub("", text))


def words_of(rest: str) -> list[str]:
    """The command's words, up to the first shell separator or comment."""
    try:
        words = shlex.split(rest, comments=True)
    except ValueError:
        words = rest.split()
    kept = []
    for word in words:
        if word in SEPARATORS or word.startswith(("#", "`", "'")) or word.endswith(")"):
            break
        kept.append(word.rstrip(":,."))  # prose after a command: `provline serve, then ...`
    return kept


def problems_of_command(words: list[str], root: Any) -> list[str]:
    """What is wrong with ``provline WORDS...`` (typer's click command tree; typer vendors its own click)."""
    command = root
    path = ["provline"]
    for word in words:
        if hasattr(command, "commands"):
            sub = command.commands.get(word)
            if sub is None:
                if word.isupper() or word.startswith(("-", "<", "[")):
                    return []  # a placeholder (provline COMMAND) or an option of the group
                return [f"{' '.join(path)} has no command {word!r}; it has {', '.join(sorted(command.commands))}"]
            command, path = sub, [*path, word]
            continue
        if word == "--":
            break  # the rest belongs to the command being wrapped (provline run -- ...)
        if word.startswith("--"):
            name = word.split("=", 1)[0]
            known = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
            if name not in known:
                return [f"{' '.join(path)} has no option {name}; it has {', '.join(sorted(known))}"]
    return []


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for document in DOCUMENTS:
        for line in code_of(document.read_text(encoding="utf-8")):
            for match in COMMAND.finditer(line):
                found.append((str(document.relative_to(REPO)), match.group("rest")))
    return found


def test_the_documents_name_commands() -> None:
    documents = {document for document, _ in documented_commands()}
    assert "README.md" in documents and "docs/operations.md" in documents


@pytest.mark.parametrize(("document", "rest"), documented_commands())
def test_every_documented_command_exists(document: str, rest: str) -> None:
    root = typer.main.get_command(app)
    assert problems_of_command(words_of(rest), root) == [], f"{document}: `provline {rest}`"


def test_a_misspelt_command_or_option_is_found() -> None:
    root = typer.main.get_command(app)
    assert problems_of_command(["verify", "--anchor", "x"], root) == []
    assert problems_of_command(["topics", "describe", "--json"], root) == []
    assert problems_of_command(["verfy"], root)
    assert problems_of_command(["verify", "--anchors", "x"], root)
    assert problems_of_command(["topics", "descrbe"], root)


def every_section() -> dict[str, type]:
    sections: dict[str, type] = {}
    for cls in settings_classes().values():
        sections.update(cls.sections())
    return sections


def documented_variables() -> list[tuple[str, str]]:
    return sorted({(str(document.relative_to(REPO)), name) for document in DOCUMENTS
                   for name in VARIABLE.findall(document.read_text(encoding="utf-8"))})


@pytest.mark.parametrize(("document", "name"), documented_variables())
def test_every_documented_variable_is_a_setting(document: str, name: str) -> None:
    sections = every_section()
    section = name.removeprefix("PROVLINE_").split("__")[0].lower()
    assert section in sections, f"{document}: {name} names no section; sections are {', '.join(sections)}"
    assert unknown_variable(name, sections) is None, f"{document}: {unknown_variable(name, sections)}"


def test_a_misspelt_variable_is_found() -> None:
    sections = every_section()
    assert unknown_variable("PROVLINE_TOPICS__PARTITIONS", sections) is None
    assert unknown_variable("PROVLINE_TOPICS__PARTITION", sections) is not None
