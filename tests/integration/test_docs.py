"""The user docs build with warnings as errors, and what they say about the CLI is true.

The docs' Python examples are executed by tests/integration/test_readme.py.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert "WARNING" not in log, log
    return out


def _text(html: Path) -> str:
    return re.sub(r"<[^>]+>", " ", html.read_text(encoding="utf-8"))


def test_docs_build_strict(site: Path) -> None:
    for page in PAGES:
        if page.name.startswith("_"):
            continue
        assert (site / page.with_suffix(".html").name).is_file(), page.name


def test_every_proof_is_published(site: Path) -> None:
    for proof in sorted((ROOT / "proofs").glob("*.md")):
        name = "index.html" if proof.name == "README.md" else proof.with_suffix(".html").name
        assert (site / "proofs" / name).is_file(), f"{proof.name} is not in the built docs"


def _cli() -> tuple[object, dict[str, object]]:
    import typer

    from dpface.cli import app

    root = typer.main.get_command(app)
    ctx = type(root).context_class(root, info_name="dpface")
    commands = {name: root.get_command(ctx, name) for name in root.list_commands(ctx)}
    return root, commands


def test_cli_reference_lists_every_command_and_option(site: Path) -> None:
    text = _text(site / "cli.html")
    _, commands = _cli()
    for name, cmd in commands.items():
        if cmd is None or getattr(cmd, "hidden", False):
            continue
        assert f"dpface {name}" in text, f"CLI reference misses `dpface {name}`"
        for param in cmd.params:  # type: ignore[attr-defined]
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert opt in text, f"CLI reference misses {opt} of `dpface {name}`"


def _fences(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, paired line by line."""
    blocks: list[tuple[str, str]] = []
    lang: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                blocks.append((lang, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def _dpface_invocations() -> list[tuple[str, list[str]]]:
    """Every `dpface ...` command line in the docs' code blocks and inline code."""
    found = []
    for page in [*PAGES, ROOT / "README.md"]:
        text = page.read_text(encoding="utf-8")
        chunks = [body for lang, body in _fences(text) if lang in ("", "bash", "sh", "console")]
        chunks += re.findall(r"`((?:\.venv/bin/)?dpface [^`\n]*)`", text)
        for chunk in chunks:
            for line in chunk.splitlines():
                line = line.split("#", 1)[0].strip()
                m = re.match(r"(?:\.venv/bin/)?dpface\s+(.*)$", line)
                if not m:
                    continue
                words = shlex.split(m.group(1))
                found.append((f"{page.name}: {line}", words))
    return found


def test_documented_command_lines_use_real_commands_and_options() -> None:
    root, commands = _cli()
    root_opts = {o for p in root.params for o in getattr(p, "opts", [])}  # type: ignore[attr-defined]
    invocations = _dpface_invocations()
    assert invocations, "the docs show no dpface command line"
    for where, words in invocations:
        if not words or words[0] in ("--help", "COMMAND"):
            continue
        if words[0].startswith("-"):  # an option of dpface itself (--version)
            assert words[0] in root_opts, f"{where}: dpface has no option {words[0]}"
            continue
        name = words[0]
        if name.isupper():  # a placeholder such as COMMAND
            continue
        assert name in commands, f"{where}: no such command `dpface {name}`"
        cmd = commands[name]
        known = {"--help"}
        for param in cmd.params:  # type: ignore[union-attr]
            known.update(getattr(param, "opts", []))
            known.update(getattr(param, "secondary_opts", []))
        for word in words[1:]:
            if word.startswith("-"):
                opt = word.split("=", 1)[0]
                assert opt in known, f"{where}: `dpface {name}` has no option {opt}"


def test_results_page_shows_the_generated_table_or_how_to_make_it(site: Path) -> None:
    text = _text(site / "results.html")
    table = DOCS / "results" / "table51.md"
    if table.is_file():
        rows = [ln for ln in table.read_text(encoding="utf-8").splitlines() if ln.startswith("|")]
        assert rows, "docs/results/table51.md has no table"
        first_cell = rows[0].strip("|").split("|")[0].strip()
        assert first_cell.replace("*", "") in text
    else:
        assert "No results yet" in text and "dpface evaluate" in text


def test_every_mechanism_page_section_links_its_proof() -> None:
    text = (DOCS / "mechanisms.md").read_text(encoding="utf-8")
    sections = re.split(r"^### ", text, flags=re.M)[1:]
    assert len(sections) >= 6
    for section in sections:
        title = section.splitlines()[0]
        assert re.search(r"\]\(\.\./proofs/[a-z_]+\.md\)", section), f"{title}: no proof link"
