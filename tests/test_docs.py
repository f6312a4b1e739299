"""The docs a reader navigates: every relative link in README.md and docs/ resolves (anchors included), every
command their code blocks show exists and takes the options shown, and every `make X` names a Makefile target."""

from __future__ import annotations

import argparse
import functools
import pathlib
import re
import shlex

import pytest
import typer
from typer.testing import CliRunner

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IDS = [str(p.relative_to(ROOT)) for p in PAGES]

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def _split_code(text: str) -> tuple[list[str], list[str]]:
    """(prose lines, code lines): fenced blocks (python ones left out of the code) and 4-space indented blocks."""
    prose, code = [], []
    fence, lang = None, ""
    for line in text.splitlines():
        m = FENCE.match(line)
        if m and fence is None:
            fence, lang = m.group(1), line.strip()[3:].strip().lower()
        elif m and line.strip().startswith(fence):
            fence = None
        elif fence is not None:
            if lang not in ("python", "py"):
                code.append(line)
        elif line.startswith("    ") and line.strip():
            code.append(line)
        else:
            prose.append(line)
    return prose, code


def _strip_inline_code(line: str) -> str:
    return re.sub(r"`[^`]*`", "", line)


def _links(path: pathlib.Path) -> list[str]:
    prose, _ = _split_code(path.read_text())
    found = []
    for line in prose:
        line = _strip_inline_code(line)
        found += LINK.findall(line)
        m = REF_LINK.match(line)
        if m:
            found.append(m.group(1))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link syntax to its text, lowercase, punctuation dropped except hyphens and
    underscores, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    text = path.read_text()
    prose, _ = _split_code(text)
    seen: dict[str, int] = {}
    out = set(HTML_ANCHOR.findall(text))
    for line in prose:
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slug_follows_githubs_rule():
    assert slug("Fine-tuning and evaluation") == "fine-tuning-and-evaluation"
    assert slug("The `cache` command") == "the-cache-command"
    assert slug("Encoders (forward + backward, official sizes)") == "encoders-forward--backward-official-sizes"
    assert slug("Stage-2 teacher: online vs exported") == "stage-2-teacher-online-vs-exported"
    assert slug("Part segmentation (ShapeNetPart and the demo's parts)") == \
        "part-segmentation-shapenetpart-and-the-demos-parts"


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_relative_link_resolves(page):
    bad = []
    for target in _links(page):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):       # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            bad.append(f"{target}: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest} does not exist")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not bad, f"{page.relative_to(ROOT)}:\n  " + "\n  ".join(bad)


def test_the_docs_are_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in _links(ROOT / "README.md")}
    assert not [p.name for p in PAGES[1:] if p.resolve() not in linked]


# ---- commands -----------------------------------------------------------------------------------------------

PROGRAMS = ("train", "preprocess", "cache")


def _command_lines(path: pathlib.Path) -> list[tuple[str, list[str]]]:
    """(line, argv after the program) for every code line that runs `train`, `preprocess` or `cache`
    (after an optional `$ `; `torchrun ... -m train ...` counts as `train ...`)."""
    _, code = _split_code(path.read_text())
    out = []
    for raw in code:
        line = raw.strip()
        line = line[2:] if line.startswith("$ ") else line
        if line.startswith("torchrun ") and " -m train " in line:
            line = "train " + line.split(" -m train ", 1)[1]
        if not line.startswith(tuple(p + " " for p in PROGRAMS)):
            continue
        line = re.split(r"\s#(?:\s|$)", line)[0].rstrip().rstrip("\\").rstrip()
        out.append((raw.strip(), shlex.split(line)))
    return out


def _subcommand_words(argv: list[str]) -> list[str]:
    words = []
    for w in argv[1:]:
        if w.startswith("-") or any(c in w for c in "/.="):
            break
        words.append(w)
    return words


def _long_options(argv: list[str]) -> set[str]:
    return {m.group(1) for w in argv[1:] if (m := re.match(r"\[?(--[a-z][a-z0-9-]*)", w))}


@functools.cache
def _typer_app(program: str) -> tuple[typer.Typer, object]:
    if program == "train":
        from train.cli import app
    else:
        from preprocess.cli import app
    return app, typer.main.get_command(app)


@functools.cache
def _help_exit(program: str, path: tuple[str, ...]) -> tuple[int, str]:
    result = CliRunner().invoke(_typer_app(program)[0], [*path, "--help"])
    return result.exit_code, result.output


def _check_typer(program: str, argv: list[str]) -> list[str]:
    _, cmd = _typer_app(program)
    root_opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    path = []
    for w in _subcommand_words(argv):
        if not hasattr(cmd, "commands"):
            break                                               # a positional argument of the command
        if w not in cmd.commands:
            return [f"`{program} {' '.join(path + [w])}`: no such command (has {sorted(cmd.commands)})"]
        cmd = cmd.commands[w]
        path.append(w)
    problems = []
    code, output = _help_exit(program, tuple(path))
    if code != 0:
        problems.append(f"`{program} {' '.join(path)} --help` exited {code}: {output[-300:]}")
    if not hasattr(cmd, "commands"):
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | root_opts
        problems += [f"`{program} {' '.join(path)}` has no option {o}" for o in sorted(_long_options(argv) - known)]
    return problems


def _check_cache(argv: list[str], capsys) -> list[str]:
    from cache_schema.cli import build_parser, main

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    words = _subcommand_words(argv)
    if not words or words[0] not in sub.choices:
        return [f"`cache {words[0] if words else ''}`: no such command (has {sorted(sub.choices)})"]
    problems = []
    with pytest.raises(SystemExit) as exit_info:
        main([words[0], "--help"])
    capsys.readouterr()
    if exit_info.value.code not in (0, None):
        problems.append(f"`cache {words[0]} --help` exited {exit_info.value.code}")
    known = set(sub.choices[words[0]]._option_string_actions)
    problems += [f"`cache {words[0]}` has no option {o}" for o in sorted(_long_options(argv) - known)]
    return problems


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_command_shown_exists(page, capsys):
    lines = _command_lines(page)
    if page.name == "README.md":
        assert {argv[0] for _, argv in lines} == set(PROGRAMS), "the README shows all three commands"
    bad = []
    for line, argv in lines:
        problems = _check_cache(argv, capsys) if argv[0] == "cache" else _check_typer(argv[0], argv)
        bad += [f"{p}\n    in: {line}" for p in problems]
    assert not bad, f"{page.relative_to(ROOT)}:\n  " + "\n  ".join(bad)


# ---- make targets ---------------------------------------------------------------------------------------------

def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_-]+)\s*:(?!=)", (ROOT / "Makefile").read_text(), flags=re.M))


def _make_mentions(path: pathlib.Path) -> set[str]:
    prose, code = _split_code(path.read_text())
    spans = code + [s for line in prose for s in re.findall(r"`([^`]*)`", line)]
    return {m for s in spans for m in re.findall(r"(?:^|\s)make ([a-z][\w-]*)(?![\w*-])", s.strip())}


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_make_target_named_exists(page):
    mentioned = _make_mentions(page)
    if page.name == "README.md":
        assert {"demo", "test", "setup", "cache"} <= mentioned
    assert not mentioned - _make_targets(), f"{page.relative_to(ROOT)}: no such make target"
