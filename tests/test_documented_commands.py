"""Every `rfm` command written in the README, docs/, examples/, the Makefile and the Dockerfile uses options the
command has: a renamed or removed flag fails here, not in a user's shell. Static: the commands are parsed, not run. And the README's Python
quickstart runs as written."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from rfm.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*.sh")),
           ROOT / "Makefile", ROOT / "Dockerfile"]
RFM = re.compile(r"^(rfm|\$\{?RFM\}?|[^\s=]*/rfm)$")  # rfm, $RFM, ${RFM}, .venv/bin/rfm, $(BIN)/rfm
SEPARATORS = {";", "&&", "||", "|", "&", ">", ">>", "<", "2>", "(", ")"}
PREFIXES = {"exec", "time", "nohup", "then", "do", "else", "$", "!"}  # words that leave the next in command position


def shell_text(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the shell in `path`: fenced code blocks of a Markdown file, the whole of a script;
    continued lines joined."""
    text = path.read_text()
    if path.name == "Makefile":  # make's own expansion first: $(BIN)/rfm is .venv/bin/rfm, $$ a shell $
        text = text.replace("$(BIN)", ".venv/bin").replace("$$", "$")
    lines = text.splitlines()
    if path.suffix == ".md":
        keep, fence, shell = [], False, False
        for i, line in enumerate(lines, 1):
            if line.startswith("```"):
                fence = not fence  # an opening fence, or the closing one of the block that is open
                shell = fence and line.strip() in ("```", "```bash", "```sh", "```console", "```shell")
                continue
            if shell:
                keep.append((i, line))
    else:
        keep = list(enumerate(lines, 1))
    out: list[tuple[int, str]] = []
    for i, line in keep:
        if out and out[-1][1].endswith("\\"):
            out[-1] = (out[-1][0], out[-1][1][:-1] + " " + line)
        else:
            out.append((i, line))
    return out


def rfm_commands(text: str) -> list[list[str]]:
    """The argument lists of the `rfm ...` commands in one (joined) shell line."""
    try:
        lex = shlex.shlex(text, posix=True, punctuation_chars=";&|<>()")
        lex.whitespace_split, lex.commenters = True, "#"
        tokens = list(lex)
    except ValueError:  # an unbalanced quote in prose-like text: not a command
        return []
    found, i = [], 0
    for t in tokens:  # a command held in a variable: E="rfm eval --checkpoint ..."; $E --delay 8
        if " " in t:
            found += rfm_commands(t.split("=", 1)[1] if re.match(r"^\w+=", t) else t)
    while i < len(tokens):
        at_start = i == 0 or tokens[i - 1] in SEPARATORS or tokens[i - 1] in PREFIXES or re.match(r"^\w+=",
                                                                                                tokens[i - 1])
        rfm_at = at_start and RFM.match(tokens[i]) is not None  # `ruff check rfm serving` is no rfm command
        module_at = tokens[i] == "-m" and i + 1 < len(tokens) and tokens[i + 1] == "rfm.cli.main"
        if rfm_at or module_at:
            j = i + (2 if module_at else 1)
            args = []
            while j < len(tokens) and tokens[j] not in SEPARATORS:
                args.append(tokens[j])
                j += 1
            if args and not args[0].startswith("-") and not args[0].endswith(":"):  # "rfm export: error": output
                found.append(args)
            i = j
        else:
            i += 1
    return found


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def unknown_options(args: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """The --options in `args` that the (sub)command they belong to does not take, or the command itself when
    rfm has no such command; [] when all exist."""
    if args[0] not in subparsers(parser) and args[0] != "...":
        return [f"command {args[0]!r}"]
    cmd = parser
    for a in args:  # descend through subcommands (rfm data generate ...)
        sub = subparsers(cmd)
        if a in sub:
            cmd = sub[a]
        elif not a.startswith("-"):
            break
    known = {s for action in cmd._actions for s in action.option_strings}
    flags = [a.split("=", 1)[0] for a in args if a.startswith("--") and a != "--"]
    return [f for f in flags if f not in known]


def documented() -> list[tuple[str, list[str]]]:
    out = []
    for path in SOURCES:
        for line, text in shell_text(path):
            for args in rfm_commands(text):
                out.append((f"{path.relative_to(ROOT)}:{line}", args))
    return out


def test_every_documented_rfm_command_uses_options_it_has():
    parser = build_parser()
    commands = documented()
    assert len(commands) > 100  # README, docs and examples hold over a hundred rfm commands in their code blocks
    bad = [f"{where}: rfm {' '.join(args)}\n    unknown: {', '.join(unknown)}"
           for where, args in commands if (unknown := unknown_options(args, parser))]
    assert not bad, "documented rfm commands with options their command does not have:\n" + "\n".join(bad)


@pytest.mark.parametrize(("text", "expected"), [
    ("rfm train --dataset d --out o && rfm eval --checkpoint o/checkpoint", [["train", "--dataset", "d", "--out", "o"],
                                                                           ["eval", "--checkpoint", "o/checkpoint"]]),
    ('$RFM data generate metaworld --tasks "reach-v3" # --not-a-flag', [["data", "generate", "metaworld", "--tasks",
                                                                         "reach-v3"]]),
    ("python -m rfm.cli.main serve --port 1 > log", [["serve", "--port", "1"]]),
    ("pip install rfm ; ruff check rfm serving", []),
    ('E="rfm eval --tasks mt10"; $E --delay 8', [["eval", "--tasks", "mt10"]]),
    ("robots ──► rfm serve replicas", []),
    ("rfm export: error: keep_fp32 'x' (--keep-fp32): matches no quantised node", []),
])
def test_commands_are_found_in_shell_lines(text, expected):
    assert rfm_commands(text) == expected


def test_an_unknown_option_is_caught_and_a_subcommand_option_is_not():
    parser = build_parser()
    assert unknown_options(["train", "--stepz", "3"], parser) == ["--stepz"]
    assert unknown_options(["data", "generate", "metaworld", "--tasks", "mt10"], parser) == []
    assert unknown_options(["data", "generate", "metaworld", "--dataset", "x"], parser) == ["--dataset"]
    assert unknown_options(["deploy", "--now"], parser) == ["command 'deploy'"]


def test_the_readme_python_quickstart_runs_as_written(monkeypatch):
    (block,) = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - the documentation's own code
    assert scope["chunk"].shape == (16, 4) and str(scope["chunk"].dtype) == "float32"  # as its comment says
