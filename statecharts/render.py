"""Render the updater's transition table as Mermaid, DOT and (when Graphviz is there) SVG.

The same :data:`updater_fsm.core.table.TRANSITIONS` the runtime machine is built from is fed to
``transitions``' diagram extension (Mermaid engine, no binaries needed), so a chart can never
describe a machine other than the one that runs. ``tests/statecharts`` regenerates the files
and fails when the committed copies are stale. Run ``tope-updater statechart`` (or
``python -m statecharts.render``) after changing the table.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path
from typing import Any

from transitions.extensions import GraphMachine

from updater_fsm.core.table import INITIAL, TRANSITIONS, State

HERE = Path(__file__).resolve().parent
TITLE = "tope-updater"


def mermaid(current: State | None = None) -> str:
    """The Mermaid ``stateDiagram-v2`` source; ``current`` is highlighted (default: initial)."""

    class _Model:
        pass

    model: Any = _Model()
    GraphMachine(
        model=model,
        states=[s.value for s in State],
        transitions=[t.as_transitions_kwargs() for t in TRANSITIONS],
        initial=(current or INITIAL).value,
        auto_transitions=False,
        graph_engine="mermaid",
        show_conditions=True,
        title=TITLE,
    )
    source: str = model.get_graph().draw(None)
    # transitions writes `Class`; Mermaid's keyword is lower-case `class`.
    lines = [
        "  class " + line.strip()[len("Class ") :] if line.strip().startswith("Class ") else line
        for line in source.splitlines()
    ]
    return "\n".join(line.rstrip() for line in lines).rstrip() + "\n"


def dot() -> str:
    """Graphviz DOT source of the same table (one edge per row, guards in brackets)."""
    out = [
        f'digraph "{TITLE}" {{',
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
        '  __start [shape=point, label=""];',
        f"  __start -> {INITIAL.value};",
    ]
    for state in State:
        shape = ", peripheries=2" if state in (State.SUCCESS, State.FAILED) else ""
        out.append(f'  {state.value} [label="{state.value}"{shape}];')
    for row in TRANSITIONS:
        guards = f" [{', '.join(row.conditions)}]" if row.conditions else ""
        for source in row.sources:
            dest = row.dest or source
            style = ", style=dashed" if row.dest is None else ""
            out.append(
                f'  {source.value} -> {dest.value} [label="{row.trigger.value}{guards}"{style}];'
            )
    out.append("}")
    return "\n".join(out) + "\n"


def table_markdown() -> str:
    """The transition table as a Markdown table (rows in the order the machine tries them)."""
    lines = [
        "| trigger | from | to | guards | action |",
        "|---|---|---|---|---|",
    ]
    for row in TRANSITIONS:
        sources = ", ".join(s.value for s in row.sources)
        dest = row.dest.value if row.dest else "(internal)"
        guards = ", ".join(row.conditions) or "—"
        lines.append(
            f"| `{row.trigger.value}` | {sources} | {dest} | {guards} | {row.action or '—'} |"
        )
    return "\n".join(lines) + "\n"


def readme(chart: str) -> str:
    """``statecharts/README.md``: the Mermaid chart embedded, with how to regenerate it."""
    return (
        "# Statecharts\n\n"
        "Generated from `updater_fsm/core/table.py` — the very table the running machine is built\n"
        "from — by `tope-updater statechart` (or `python -m statecharts.render`). Do not edit\n"
        "the generated files by hand: `tests/statecharts/test_fresh.py` fails when they are\n"
        "stale. Dashed DOT edges and `[internal]` Mermaid labels are internal transitions\n"
        "(the state stays; the action runs). Guards are shown in brackets.\n\n"
        "Files: `updater.mmd` (Mermaid), `updater.dot` (Graphviz), `updater.svg` (rendered\n"
        "when Graphviz `dot` is installed).\n\n"
        "```mermaid\n" + chart + "```\n\n"
        "## The transition table\n\n"
        "For each event the first row whose source matches and whose guards all pass fires.\n\n"
        + table_markdown()
    )


def render_all(out_dir: Path = HERE) -> list[Path]:
    """Write the Mermaid, DOT and README files, and ``updater.svg`` when ``dot`` exists."""
    chart = mermaid()
    files = {
        out_dir / "updater.mmd": chart,
        out_dir / "updater.dot": dot(),
        out_dir / "README.md": readme(chart),
    }
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    written = list(files)
    dot_bin = shutil.which("dot")
    if dot_bin:
        svg = out_dir / "updater.svg"
        subprocess.run([dot_bin, "-Tsvg", "-o", str(svg), str(out_dir / "updater.dot")], check=True)
        written.append(svg)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=HERE, help="output directory")
    args = parser.parse_args(argv)
    for path in render_all(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
