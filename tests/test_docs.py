"""Every Python block of README.md and docs/*.md runs alone, as a user would paste it.

Each block runs by itself in a fresh interpreter (it repeats its imports; a page on several
devices creates them in each block's first lines), and what it states it prints, in a
``print(...)  # -> OUTPUT`` comment (or a ``# -> OUTPUT`` line right after the ``print``), it
must print (``...`` stands for any text). Code lines are at most 100 characters (the site shows
that many without scrolling in a 1,280-pixel window). A block
preceded by ``<!-- requires: flax, optax -->`` needs those modules and is skipped without them.
Fenced blocks must name their language, and only ``python`` blocks are code to run (``bash``
and ``text`` are not), so a page cannot gain a Python block that no test runs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from support import FAST_COMPILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGES = ["README.md", *sorted(os.path.join("docs", f) for f in os.listdir(DOCS) if f.endswith(".md"))]
FENCE = re.compile(r"^( *)```([^\n`]*)\n(.*?)^\1```[ \t]*$", re.M | re.S)
REQUIRES = re.compile(r"<!-- requires: ([\w, .-]+) -->\s*(?:<!--[^\n]*-->\s*)*$")
LANGUAGES = {"python", "bash", "text", "py"}  # py: an example script included whole


def blocks(page: str) -> list[tuple[str, str, list[str]]]:
    """(language, code, modules it requires) of each fenced block, in order."""
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        text = f.read()
    found = []
    for match in FENCE.finditer(text):
        indent, language, body = match.group(1), match.group(2).strip(), match.group(3)
        code = "\n".join(line[len(indent):] for line in body.splitlines())
        marker = REQUIRES.search(text[: match.start()])
        modules = [m.strip() for m in marker.group(1).split(",")] if marker else []
        found.append((language, code, modules))
    return found


def test_every_page_is_checked():
    assert "README.md" in PAGES and len(PAGES) >= 10, PAGES


@pytest.mark.parametrize("page", PAGES)
def test_fenced_blocks_name_a_known_language(page):
    languages = [language for language, _, _ in blocks(page)]
    assert set(languages) <= LANGUAGES, f"{page}: blocks in {sorted(set(languages) - LANGUAGES)}"


BLOCKS = [(page, i) for page in PAGES for i, (language, _, _) in enumerate(blocks(page)) if language == "python"]
STATED = re.compile(r"^(\s*)print\((.*)\)\s*# -> (.*)$")  # print(...)  # -> OUTPUT
BARE = re.compile(r"^(\s*)print\((.*)\)\s*$")  # print(...), its OUTPUT on the next line
NEXT = re.compile(r"^\s*# -> (.*)$")


def checked(code: str) -> str:
    """``code`` with each ``print(...)  # -> OUTPUT`` line also checking that it prints OUTPUT
    (``...`` in OUTPUT stands for any text)."""
    lines = code.splitlines()
    for i, line in enumerate(lines):
        stated, bare = STATED.match(line), BARE.match(line)
        nxt = NEXT.match(lines[i + 1]) if bare and i + 1 < len(lines) else None
        if stated:
            indent, args, want = stated.groups()
        elif bare and nxt:
            (indent, args), want = bare.groups(), nxt.group(1)
        else:
            continue
        lines[i] = f"{indent}_stated({want.strip()!r}, {args})"
    helper = (
        "def _stated(want, *args, **kwargs):\n"
        "    import io, re\n"
        "    out = io.StringIO(); print(*args, **kwargs, file=out); got = out.getvalue().rstrip('\\n')\n"
        "    print(got)\n"
        "    pattern = '.*'.join(map(re.escape, want.split('...')))\n"
        "    assert re.fullmatch(pattern, got, re.S), f'the page states {want!r}; it printed {got!r}'\n"
    )
    return helper + "\n".join(lines)


def test_stated_outputs_are_rewritten_into_checks():
    code = checked('x = 1\nprint(x + 1, "a")  # -> 2 a\nprint(x)  # -> 1...\nprint(x)\n# -> 1')
    assert "_stated('2 a', x + 1, \"a\")" in code and "_stated('1...', x)" in code and "_stated('1', x)" in code
    with pytest.raises(AssertionError, match="states '3'"):
        exec(checked("print(1 + 1)  # -> 3"), {})
    exec(checked("print([1, 2])  # -> [1, ...]"), {})


@pytest.mark.parametrize("page", PAGES)
def test_py_blocks_only_include_example_scripts(page):
    """``py`` blocks show a script of examples/ (run by test_examples.py), included whole."""
    for language, code, _ in blocks(page):
        if language == "py":
            match = re.fullmatch(r'--8<-- "(examples/\w+\.py)"\s*', code)
            assert match and os.path.exists(os.path.join(ROOT, match.group(1))), code


def test_every_example_is_shown():
    shown = "".join(code for language, code, _ in blocks("docs/examples.md") if language == "py")
    scripts = sorted(f for f in os.listdir(os.path.join(ROOT, "examples")) if f.endswith(".py"))
    assert scripts and all(f'"examples/{f}"' in shown for f in scripts), scripts


@pytest.mark.parametrize("page", PAGES)
def test_code_lines_fit_the_page(page):
    long = [line for language, code, _ in blocks(page) if language != "py" for line in code.splitlines()
            if len(line) > 100]
    assert not long, f"{page}: lines over 100 characters: {long}"


@pytest.mark.parametrize("page,index", BLOCKS, ids=[f"{p}-{i}" for p, i in BLOCKS])
def test_python_block_runs_alone(page, index):
    """Each block, pasted alone into a fresh interpreter (no simulated devices but those it
    creates), runs, and prints what its ``# -> OUTPUT`` comments state."""
    _, code, modules = blocks(page)[index]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{page} block {index} needs {', '.join(missing)}")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = FAST_COMPILE  # the suite's compile level (conftest.py)
    out = subprocess.run([sys.executable, "-c", checked(code)], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=600)
    assert out.returncode == 0, f"{page}, block {index}:\n{code}\n---\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
