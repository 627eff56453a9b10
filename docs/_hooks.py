"""mkdocs hooks for dpface's docs (configured in mkdocs.yml; excluded from the site).

* ``on_files``: every ``proofs/*.md`` of the repository becomes the page ``proofs/<name>.md``,
  so the proofs are published from their one source and links to them are checked by
  ``--strict``. Pages link to them as ``../proofs/<name>.md`` (which also works when the
  Markdown is read in the repository); the link is rewritten to the published path here.
* ``on_page_markdown``: two markers are expanded at build time,
  ``<!-- dpface:cli-reference -->`` (generated from the real ``dpface`` command, so the
  reference cannot drift from the code) and ``<!-- dpface:results-table -->`` (the contents
  of ``docs/results/table51.md`` when ``dpface evaluate`` has written it, else how to make it)
  and ``<!-- dpface:recall-table -->`` (``docs/results/recall.md``, written by
  ``scripts/bench_recall.py``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
PROOFS = ROOT / "proofs"
RESULTS = ROOT / "docs" / "results" / "table51.md"
RECALL = ROOT / "docs" / "results" / "recall.md"

CLI_MARKER = "<!-- dpface:cli-reference -->"
RESULTS_MARKER = "<!-- dpface:results-table -->"
RECALL_MARKER = "<!-- dpface:recall-table -->"


def on_files(files: Files, config: Any) -> Files:
    for path in sorted(PROOFS.glob("*.md")):
        files.append(File.generated(config, f"proofs/{path.name}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if not page.file.src_uri.startswith("proofs/"):
        markdown = re.sub(r"\]\(\.\./proofs/", "](proofs/", markdown)
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if RESULTS_MARKER in markdown:
        markdown = markdown.replace(RESULTS_MARKER, results_table())
    if RECALL_MARKER in markdown:
        markdown = markdown.replace(RECALL_MARKER, recall_table())
    return markdown


def recall_table() -> str:
    """The recall benchmark's tables, nested below the including page's h2."""
    if not RECALL.is_file():
        return (
            "*No benchmark in this checkout: run `./dev bench recall` (or "
            "`python scripts/bench_recall.py`) to write `docs/results/recall.md`.*\n"
        )
    text = RECALL.read_text(encoding="utf-8")
    return re.sub(
        r"^(#{1,5}) ", lambda m: "#" * max(3, len(m.group(1)) + 1) + " ", text, flags=re.M
    )


def results_table() -> str:
    if RESULTS.is_file():
        text = RESULTS.read_text(encoding="utf-8")
        # links in the table file are relative to docs/results/; this page is docs/results.md
        text = re.sub(r"\]\((?![a-z]+:|/|#|results/)([^)\s]+)\)", r"](results/\1)", text)
        # nest the file's headings below this page's "Latest results" (h2)
        return re.sub(
            r"^(#{1,5}) ", lambda m: "#" * max(3, len(m.group(1)) + 1) + " ", text, flags=re.M
        )
    return (
        "*No results yet in this checkout: `docs/results/table51.md` has not been generated. "
        "Produce it with `dpface evaluate` as described above; the numbers on this page are "
        "only ever copied from that file, never written by hand.*\n"
    )


def _param_line(param: Any) -> str:
    if param.param_type_name == "argument":
        name = param.name.upper()
        req = "required" if param.required else "optional"
        many = ", one or more" if param.nargs == -1 else ""
        return f"| `{name}` | argument ({req}{many}) | | {_help(param)} |"
    opts = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
    default = "" if param.is_flag and not param.default else _default(param)
    return f"| {opts} | {_type(param)} | {default} | {_help(param)} |"


def _type(param: Any) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    ann = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if ann is None:
        return str(getattr(getattr(param, "type", None), "name", "")).lower()
    return getattr(ann, "__name__", str(ann)).replace("pathlib.", "").lower()


def _default(param: Any) -> str:
    value = param.default
    if value is None or callable(value):
        return ""
    return f"`{value}`"


def _help(param: Any) -> str:
    text = getattr(param, "help", None) or ""
    return " ".join(text.split()).replace("|", "\\|")


def cli_reference() -> str:
    """Markdown for every ``dpface`` subcommand: usage, description, arguments and options."""
    import typer

    from dpface.cli import app

    # typer ships its own copy of click: use the context class of the command it builds
    root = typer.main.get_command(app)
    context = type(root).context_class
    ctx = context(root, info_name="dpface")
    out: list[str] = []
    for name in root.list_commands(ctx):
        cmd = root.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        args = [
            p.name.upper() + ("..." if p.nargs == -1 else "")
            for p in cmd.params
            if p.param_type_name == "argument"
        ]
        usage = " ".join(["[OPTIONS]", *args]) if cmd.params else ""
        out.append(f"### `dpface {name}`\n")
        out.append(f"```text\ndpface {name} {usage}\n```\n")
        doc = (cmd.help or "").split("\f")[0].strip()
        if doc:
            out.append(doc + "\n")
        params = [p for p in cmd.params if not getattr(p, "hidden", False)]
        if params:
            out.append("| argument / option | type | default | meaning |")
            out.append("| --- | --- | --- | --- |")
            out.extend(_param_line(p) for p in params)
            out.append("")
    return "\n".join(out)
