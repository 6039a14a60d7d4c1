"""Every Python block of README.md and docs/*.md runs, in order per page, as one script.

A page runs in a fresh interpreter, its blocks in order (a block may use what an earlier one
defined). A block preceded by ``<!-- requires: flax, optax -->`` needs those modules: where one
is missing, that block and the rest of the page are skipped. A page holding
``<!-- devices: 8 -->`` runs on 8 simulated CPU devices. Fenced blocks must name their
language, and only ``python`` blocks are code to run (``bash`` and ``text`` are not), so a page
cannot gain a Python block that no test runs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGES = ["README.md", *sorted(os.path.join("docs", f) for f in os.listdir(DOCS) if f.endswith(".md"))]
FENCE = re.compile(r"^( *)```([^\n`]*)\n(.*?)^\1```[ \t]*$", re.M | re.S)
REQUIRES = re.compile(r"<!-- requires: ([\w, .-]+) -->\s*(?:<!--[^\n]*-->\s*)*$")
LANGUAGES = {"python", "bash", "text"}


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


@pytest.mark.parametrize("page", [p for p in PAGES if any(lang == "python" for lang, _, _ in blocks(p))])
def test_python_blocks_run(page):
    script, skipped = [], None
    for i, (language, code, modules) in enumerate(blocks(page)):
        if language != "python":
            continue
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            skipped = f"block {i} needs {', '.join(missing)}"
            break
        script.append(f"# ---- {page}, block {i}\n{code}")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        if "<!-- devices: 8 -->" in f.read():
            env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    if script:
        out = subprocess.run([sys.executable, "-c", "\n\n".join(script)], capture_output=True, text=True, cwd=ROOT,
                             env=env, timeout=600)
        assert out.returncode == 0, f"{page}:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    if skipped:
        pytest.skip(f"{page}: {skipped}")
