"""Render the updater's transition table as Mermaid, DOT, Markdown and (with Graphviz) SVG.

Everything here is computed from :data:`updater_fsm.core.table.TRANSITIONS`, the very rows the
runtime machine is built from, and every row ends up somewhere:

* the **overview** (``updater.dot``/``updater.svg``/``updater.mmd``): the lifecycle, top to
  bottom. One edge per source→destination pair with the triggers merged into its label;
  rows with many sources (``cancel``, ``reset``, …) are drawn once, from a note naming the
  sources and the triggers (the notes into one state gathered into one note); the edges
  into ``failed`` say whether a rollback restored a version (:func:`failed_outcome`); the
  ``current_job`` guard (stale results are ignored) is left out;
* the **restart table** (``README.md``): what a ``resume`` does in each state, crash-loop
  breaker included;
* the **full table** (``README.md``): every row, internal ones (the state stays) included,
  with where it is drawn.

``tests/statecharts`` regenerates the files and fails when the committed copies are stale;
the SVG carries the SHA-256 of the DOT source it was rendered from. Run
``tope-updater statechart`` (or ``python -m statecharts.render``) after changing the table.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import attrs

from updater_fsm.core.table import INITIAL, TERMINAL_STATES, TRANSITIONS, State, Transition, Trigger

HERE = Path(__file__).resolve().parent
TITLE = "tope-updater"

#: Rendering-only grouping of states (a Graphviz cluster, a Mermaid colour and note each).
GROUPS: dict[str, tuple[State, ...]] = {
    "install": (State.DEPLOYING, State.SWITCHING, State.HEALTH_CHECK),
    "rollback": (State.ROLLBACK_PREVIOUS, State.ROLLBACK_FACTORY),
    "selfupdate": (State.UPDATER_STAGING, State.UPDATER_SWITCHING, State.UPDATER_PROBATION),
}
#: Short, so the edges into a group's first state pass beside its title (the legend says
#: that every grouped state reports the stage ``installing``).
_GROUP_TITLES = {
    "install": "install",
    "rollback": "rollback ladder",
    "selfupdate": "the updater updates itself",
}

#: The happy path, drawn as a straight bold spine.
SPINE: tuple[State, ...] = (
    State.IDLE,
    State.DOWNLOADING,
    State.VERIFYING,
    State.READY,
    State.DEPLOYING,
    State.SWITCHING,
    State.HEALTH_CHECK,
    State.SUCCESS,
)
_SPINE_PAIRS = frozenset(itertools.pairwise(SPINE))

#: Guards left off the overview (explained in its legend).
HIDDEN_GUARDS = frozenset({"current_job"})
#: A row with at least this many sources (off the spine) is drawn once, from a note.
FAN_IN = 3
#: An edge going further back up than this many states is drawn from a note too.
FAR_BACK = 2

_FAILURES = frozenset(
    {
        Trigger.DOWNLOAD_FAILED,
        Trigger.VERIFY_FAILED,
        Trigger.WAIT_FAILED,
        Trigger.STAGE_FAILED,
        Trigger.SWITCH_FAILED,
        Trigger.UNHEALTHY,
        Trigger.ROLLBACK_FAILED,
        Trigger.UPDATER_STAGE_FAILED,
        Trigger.UPDATER_ROLLED_BACK,
    }
)
_REQUESTS = frozenset(
    {
        Trigger.DOWNLOAD_REQUESTED,
        Trigger.UPDATE_REQUESTED,
        Trigger.ROLLBACK_REQUESTED,
        Trigger.CANCEL,
        Trigger.RESET,
    }
)
_COLOURS = {
    "spine": "black",
    "failure": "#c0392b",
    "request": "#1f5fa8",
    "result": "#555555",
    "restored": "#c77c02",
    "not_restored": "#c0392b",
    "gathered": "#8a7a3a",
}
_FILL = {"install": "#eef3fb", "rollback": "#fdf0e6", "selfupdate": "#eefbef"}
_SVG_HASH = re.compile(r"<!-- dot-sha256: ([0-9a-f]{64}) -->")

Pair = tuple[int, State]  # (row index in TRANSITIONS, one of its sources)


def _name(item: object) -> str:
    """The name of a guard or action (``""`` for a row without an action)."""
    if item is None:
        return ""
    return str(getattr(item, "__name__", item))


def _names(items: Iterable[object]) -> tuple[str, ...]:
    return tuple(_name(item) for item in items)


def group_of(state: State) -> str | None:
    """The rendering group a state belongs to, if any."""
    return next((g for g, members in GROUPS.items() if state in members), None)


@attrs.frozen
class Note:
    """A pseudo-node standing for "any of these states", pinned next to ``dest``.

    ``lines`` is set on a *gathered* note: all the notes into one destination drawn as one,
    a line per row group (its sources, its triggers with their guards, its kind).
    """

    sources: tuple[State, ...]
    dest: State
    lines: tuple[tuple[tuple[State, ...], tuple[tuple[str, str], ...], str], ...] = ()

    @property
    def id(self) -> str:
        if self.lines:
            return f"notes_to_{self.dest.value}"
        return "_".join(["from", *(s.value for s in self.sources), "to", self.dest.value])

    @property
    def label(self) -> str:
        return "from " + ", ".join(s.value for s in self.sources)


#: How a device that ends in ``failed`` stands, by the action of the row that takes it
#: there. The table's rows already tell a rollback that worked (``finish_rollback``:
#: ``ROLLBACK_LEVEL_1/2_SUCCESS``) from one that did not (``give_up``: ``ROLLBACK_FAILED``),
#: so the chart says it on the edges into ``failed``; the machine needs no more states.
RESTORED = "restored"
NOT_RESTORED = "not_restored"
FAILED_OUTCOMES: dict[str, str] = {
    "finish_rollback": RESTORED,
    "give_up": NOT_RESTORED,
    "give_up_interrupted": NOT_RESTORED,
}
_RESTORED_WORDS = {
    State.ROLLBACK_PREVIOUS: "= restored (the previous version runs)",
    State.ROLLBACK_FACTORY: "= restored (the factory version runs)",
}
_NOT_RESTORED_WORDS = "= NOT restored (service needed)"


def failed_outcome(row: Transition) -> str | None:
    """:data:`RESTORED` or :data:`NOT_RESTORED` for a row into ``failed`` that decides it;
    None for any other row (into ``failed``: a failure that left the device as it was)."""
    if row.dest is not State.FAILED:
        return None
    return FAILED_OUTCOMES.get(_name(row.action))


@attrs.frozen
class Edge:
    """One drawn edge of the overview and the (row, source) pairs it stands for."""

    tail: State | Note
    head: State
    parts: tuple[tuple[str, str], ...]  # (trigger, "[guards]") per row, in table order
    # spine | failure | request | result | restored | not_restored | gathered
    kind: str
    covers: tuple[Pair, ...]

    @property
    def tail_id(self) -> str:
        return self.tail.id if isinstance(self.tail, Note) else self.tail.value

    @property
    def backward(self) -> bool:
        """Drawn against the flow (to an earlier state): it must not shape the layout."""
        order = list(State)
        return isinstance(self.tail, State) and order.index(self.tail) >= order.index(self.head)

    @property
    def outcome(self) -> str | None:
        """What the device runs after this edge into ``failed``, in words (else None)."""
        if self.kind == RESTORED and isinstance(self.tail, State):
            return _RESTORED_WORDS.get(self.tail)
        if self.kind == NOT_RESTORED:
            return _NOT_RESTORED_WORDS
        return None


def _is_fallback(index: int, source: State) -> bool:
    """An earlier row for the same trigger and source would fire whenever this one's guards
    pass too (its guards are a superset), so this row only fires when that one did not."""
    row = TRANSITIONS[index]
    mine = set(_names(row.conditions))
    return any(
        earlier.trigger is row.trigger
        and source in earlier.sources
        and mine <= set(_names(earlier.conditions))
        for earlier in TRANSITIONS[:index]
    )


def _part(index: int, sources: Iterable[State]) -> tuple[str, str]:
    """``(trigger, "[guards]")`` of a row as the overview shows it."""
    row = TRANSITIONS[index]
    guards = [g for g in _names(row.conditions) if g not in HIDDEN_GUARDS]
    if all(_is_fallback(index, s) for s in sources):
        guards.append("else")
    return row.trigger.value, f"[{', '.join(guards)}]" if guards else ""


def _kind(triggers: Iterable[Trigger], spine: bool) -> str:
    found = set(triggers)
    if spine:
        return "spine"
    if found & _FAILURES:
        return "failure"
    if found & _REQUESTS:
        return "request"
    return "result"


def where(row: Transition) -> str:
    """Where a row is drawn: ``overview``, ``restart`` (recovery table) or ``internal``."""
    if row.trigger is Trigger.RESUME:
        return "restart"
    if row.dest is None:
        return "internal"
    return "overview"


def _far_back(source: State, dest: State) -> bool:
    """``source`` is more than ``FAR_BACK`` states below ``dest`` (in the table's order)."""
    order = list(State)
    return order.index(source) - order.index(dest) > FAR_BACK


def overview() -> tuple[Edge, ...]:
    """The overview's edges: every (row, source) pair of every ``overview`` row, grouped.

    A row with ``FAN_IN`` or more sources off the spine, and a row going far back up, is
    drawn from a note naming its sources placed next to its destination (one short edge
    instead of many long ones); the notes into one destination are gathered into one.
    Rows into ``failed`` that restored a version and rows that could not are never merged
    into one edge (:func:`failed_outcome`).
    """
    merged: dict[tuple[str, State, str | None], list[tuple[int, State | Note, tuple[State, ...]]]]
    merged = {}
    for index, row in enumerate(TRANSITIONS):
        if where(row) != "overview" or row.dest is None:
            continue
        outcome = failed_outcome(row)
        rest = tuple(s for s in row.sources if (s, row.dest) not in _SPINE_PAIRS)
        if len(rest) < FAN_IN:
            rest = tuple(s for s in rest if _far_back(s, row.dest))
        if rest:
            note = Note(rest, row.dest)
            merged.setdefault((note.id, row.dest, outcome), []).append((index, note, rest))
        direct = [s for s in row.sources if s not in rest]
        for source in direct:
            key = (source.value, row.dest, outcome)
            merged.setdefault(key, []).append((index, source, (source,)))
    edges = []
    for (_, head, outcome), items in merged.items():
        tail = items[0][1]
        triggers = [TRANSITIONS[i].trigger for i, _, _ in items]
        spine = isinstance(tail, State) and (tail, head) in _SPINE_PAIRS
        edges.append(
            Edge(
                tail=tail,
                head=head,
                parts=tuple(_part(i, sources) for i, _, sources in items),
                kind=outcome or _kind(triggers, spine),
                covers=tuple((i, s) for i, _, sources in items for s in sources),
            )
        )
    return _gather(edges)


def _gather(edges: list[Edge]) -> tuple[Edge, ...]:
    """``edges`` with the edges from notes into a destination that has several replaced by
    one edge from one gathered note (in the place of the first)."""
    by_head: dict[State, list[Edge]] = {}
    for edge in edges:
        if isinstance(edge.tail, Note):
            by_head.setdefault(edge.head, []).append(edge)
    out: list[Edge] = []
    for edge in edges:
        group = by_head.get(edge.head, [])
        if not isinstance(edge.tail, Note) or len(group) < 2:
            out.append(edge)
            continue
        if edge is not group[0]:
            continue
        lines = tuple((e.tail.sources, e.parts, e.kind) for e in group if isinstance(e.tail, Note))
        sources = tuple(dict.fromkeys(s for src, _, _ in lines for s in src))
        out.append(
            Edge(
                tail=Note(sources, edge.head, lines),
                head=edge.head,
                parts=tuple(p for e in group for p in e.parts),
                kind="gathered",
                covers=tuple(pair for e in group for pair in e.covers),
            )
        )
    return tuple(out)


def notes(edges: Iterable[Edge]) -> tuple[Note, ...]:
    """The distinct notes the edges start from, in order of appearance."""
    found = [e.tail for e in edges if isinstance(e.tail, Note)]
    return tuple(dict.fromkeys(found))


# --- Graphviz -------------------------------------------------------------------------


def _q(text: str) -> str:
    """A quoted DOT string; ``text`` may hold DOT's line escapes (``\\n``, ``\\l``)."""
    return '"' + text.replace('"', '\\"') + '"'


def _dot_node(state: State) -> str:
    attrs_ = [f"label={_q(state.value)}"]
    if state in SPINE:
        attrs_.append("group=spine")
    if state in TERMINAL_STATES:
        attrs_.append("peripheries=2")
    if state is State.FAILED:
        attrs_.append('color="#c0392b"')
    group = group_of(state)
    if group:
        attrs_.append(f'fillcolor="{_FILL[group]}"')
    return f"    {state.value} [{', '.join(attrs_)}];"


def _dot_part(part: tuple[str, str]) -> str:
    """A trigger and its guards, the guards wrapped to lines of about 30 characters, so a
    label stays narrow and beside its edge."""
    trigger, guards = part
    if not guards:
        return trigger
    if len(trigger) + len(guards) < 30:
        return f"{trigger} {guards}"
    return "\\n".join([trigger, *_wrap(guards.split(", "), 30)])


def _wrap(words: Iterable[str], width: int = 26) -> list[str]:
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + len(word) + 2 <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
        lines[-1] += ","
    return [*lines[:-1], lines[-1].rstrip(",")] if lines else []


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _lines(parts: Iterable[tuple[str, str]]) -> list[str]:
    """The lines of a label: a trigger with its guards wrapped, per part."""
    return [line for part in parts for line in _dot_part(part).split("\\n")]


def _note_label(lines: Iterable[tuple[tuple[State, ...], tuple[tuple[str, str], ...], str]]) -> str:
    """A note's HTML-like label: a row per group of sources, ``from <sources>`` and beside it
    the triggers (with their guards) in the colour of their edge kind. The note says what
    its edge does, so that edge needs no label of its own to lose in the crowd."""
    rows = []
    for sources, parts, kind in lines:
        said = '<BR ALIGN="LEFT"/>'.join(_html(line) for line in _lines(parts))
        rows.append(
            f'<TR><TD ALIGN="LEFT" VALIGN="TOP">from {_html(", ".join(s.value for s in sources))}'
            '</TD><TD WIDTH="8"></TD>'
            f'<TD ALIGN="LEFT" BALIGN="LEFT"><FONT COLOR="{_COLOURS[kind]}">{said}</FONT></TD>'
            # room for a face a little wider than Graphviz measured
            '<TD WIDTH="12"></TD></TR>'
        )
    return (
        '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">'
        + "".join(rows)
        + "</TABLE>>"
    )


def _edge_label(lines: list[str]) -> str:
    """An edge's HTML-like label, left-aligned, a few points clear of its edge on either
    side (Graphviz puts the edge right against its label's box)."""
    if not lines:
        return '""'
    text = '<BR ALIGN="LEFT"/>'.join(_html(line) for line in lines)
    return (
        '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="0"><TR>'
        f'<TD WIDTH="5"></TD><TD ALIGN="LEFT" BALIGN="LEFT">{text}</TD><TD WIDTH="8"></TD>'
        "</TR></TABLE>>"
    )


def dot() -> str:
    """Graphviz DOT source of the overview (the lifecycle, top to bottom)."""
    edges = overview()
    out = [
        f"digraph {_q(TITLE)} {{",
        "  rankdir=TB; newrank=true; nodesep=0.3; ranksep=0.35;",
        '  fontname="Helvetica"; fontsize=11; labelloc=b; labeljust=l;',
        "  label=" + _q(_LEGEND.replace("\n", "\\l") + "\\l") + ";",
        '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="Helvetica",'
        " fontsize=12];",
        '  edge [fontname="Helvetica", fontsize=9];',
        '  __start [shape=point, label="", width=0.15, group=spine];',
        f"  __start -> {INITIAL.value} [weight=10];",
    ]
    grouped = {s for members in GROUPS.values() for s in members}
    for state in State:
        if state not in grouped:
            out.append(_dot_node(state)[2:])
    for group, members in GROUPS.items():
        out.append(f"  subgraph cluster_{group} {{")
        # the title on top, where edges leaving the group at the bottom cannot cross it
        out.append(f"    label={_q(_GROUP_TITLES[group])}; labeljust=l; labelloc=t; fontsize=10;")
        out.append(f'    style="rounded,filled"; color="#9aa5b1"; fillcolor="{_FILL[group]}";')
        out.extend(_dot_node(state) for state in members)
        out.append("  }")
    for same in _SAME_RANK:
        out.append("  { rank=same; " + " ".join(f"{s.value};" for s in same) + " }")
    for edge in edges:
        if isinstance(edge.tail, Note):  # one edge per note: its label is the note's
            note = edge.tail
            rows = note.lines or ((note.sources, edge.parts, edge.kind),)
            out.append(
                f"  {note.id} [label={_note_label(rows)}, shape=note, style=filled,"
                ' fillcolor="#fffbe6", color="#b8a55a", fontsize=10];'
            )
    for edge in edges:
        colour = _COLOURS[edge.kind]
        lines = [] if isinstance(edge.tail, Note) else _lines(edge.parts)
        if edge.outcome:
            lines.append(edge.outcome)
        options = [
            "label=" + _edge_label(lines),
            f'color="{colour}"',
            f'fontcolor="{colour}"',
        ]
        if edge.kind in ("spine", NOT_RESTORED):
            options.append("penwidth=2.2")
        if edge.kind == RESTORED:
            options.append("penwidth=1.8")
        if edge.kind == "spine":
            options.append("weight=10")
        if edge.backward:
            options.append("constraint=false")
        if isinstance(edge.tail, Note):
            options.append("style=dashed")
        out.append(f"  {edge.tail_id} -> {edge.head.value} [{', '.join(options)}];")
    out.append("}")
    return "\n".join(out) + "\n"


#: Layout hints: the rollback ladder beside the end of the spine, failed at the bottom.
_SAME_RANK: tuple[tuple[State, ...], ...] = (
    (State.HEALTH_CHECK, State.ROLLBACK_PREVIOUS),
    (State.SUCCESS, State.FAILED),
)


_LEGEND = (
    "Bold: the happy path. Red: failures. Blue: requests (API). Dashed: from a note's states.\n"
    "Into failed, orange: rolled back, the previous or factory version runs (ROLLBACK_LEVEL_1/2"
    "_SUCCESS);\n"
    "bold red: NOT restored (ROLLBACK_FAILED), service needed; thin red: failed before the\n"
    "switch (the device runs what it ran) or in the updater's own update (the new version runs).\n"
    "The grouped states report the stage installing.\n"
    "[else]: an earlier row for the same event and state did not match (rows are tried in "
    "order).\n"
    "Not drawn: the guard current_job (results of a cancelled or replaced job are ignored),\n"
    "internal transitions (the state stays) and restarts (resume): see statecharts/README.md."
)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stamp_svg(svg: str, dot_source: str) -> str:
    """``svg`` with the SHA-256 of the DOT source it was rendered from, as an XML comment."""
    comment = f"<!-- dot-sha256: {sha256(dot_source)} -->"
    head, sep, tail = svg.partition("<svg")
    return head + comment + "\n" + sep + tail


def svg_problem(svg: str, dot_source: str) -> str | None:
    """Why ``svg`` is not the rendering of ``dot_source`` (``None`` when it is)."""
    found = _SVG_HASH.search(svg)
    if found is None:
        return "has no dot-sha256 stamp"
    if found.group(1) != sha256(dot_source):
        return "was rendered from a different updater.dot"
    return None


# --- Mermaid --------------------------------------------------------------------------


def mermaid(current: State | None = None) -> str:
    """The overview as Mermaid ``stateDiagram-v2``; ``current`` is highlighted (default: initial).

    Groups are colours plus a note each: Mermaid cannot draw transitions between states of
    two composite states (``switching --> rollback_previous``) nor style states inside one.
    """
    current = current or INITIAL
    edges = overview()
    out = [
        "---",
        f"title: {TITLE}",
        "---",
        "stateDiagram-v2",
        "  direction TB",
        "  classDef s_default fill:white,color:black",
        "  classDef s_active color:red,fill:darksalmon",
        f"  classDef g_install fill:{_FILL['install']},color:black",
        f"  classDef g_rollback fill:{_FILL['rollback']},color:black",
        f"  classDef g_selfupdate fill:{_FILL['selfupdate']},color:black",
        "  classDef s_note fill:#fffbe6,color:#555,stroke-dasharray:4 4",
        "",
    ]
    for state in State:
        group = group_of(state)
        cls = "s_active" if state is current else (f"g_{group}" if group else "s_default")
        out += [f'  state "{state.value}" as {state.value}', f"  class {state.value} {cls}"]
    for note in notes(edges):
        out += [f'  state "{note.label}" as {note.id}', f"  class {note.id} s_note"]
    out += ["", f"  [*] --> {INITIAL.value}"]
    for edge in edges:
        label = " / ".join(" ".join(x for x in p if x) for p in edge.parts)
        if isinstance(edge.tail, Note) and edge.tail.lines:  # which sources each part is for
            label = " / ".join(
                ", ".join(" ".join(x for x in p if x) for p in parts)
                + f" (from {', '.join(s.value for s in sources)})"
                for sources, parts, _ in edge.tail.lines
            )
        if edge.outcome:
            label += " " + edge.outcome
        out.append(f"  {edge.tail_id} --> {edge.head.value} : {label}")
    out.append("")
    for group, members in GROUPS.items():
        out.append(
            f"  note left of {members[0].value} : {group} group = "
            + ", ".join(s.value for s in members)
        )
    return "\n".join(out) + "\n"


# --- Markdown -------------------------------------------------------------------------


def _cell(items: list[int], drop: frozenset[str]) -> str:
    steps = []
    for index in items:
        row = TRANSITIONS[index]
        guards = [g for g in _names(row.conditions) if g not in drop]
        when = f"[{', '.join(guards)}] " if guards else ""
        to = f"→ {row.dest.value}" if row.dest else "stays"
        steps.append(f"{when}{to} (`{_name(row.action)}`)")
    return "; else ".join(steps) or "—"


def recovery() -> dict[State, tuple[list[int], list[int]]]:
    """Per state, the ``resume`` rows (indices) of the crash-loop breaker and the others."""
    breaker = "resume_limit_reached"
    out: dict[State, tuple[list[int], list[int]]] = {s: ([], []) for s in State}
    for index, row in enumerate(TRANSITIONS):
        if where(row) == "restart":
            for source in row.sources:
                out[source][0 if breaker in _names(row.conditions) else 1].append(index)
    return out


def recovery_markdown() -> str:
    """What a restart does in each state (the ``resume`` rows), as a Markdown table."""
    lines = [
        "| state at restart | crash loop: `resume_limit_reached` | otherwise |",
        "|---|---|---|",
    ]
    drop = frozenset({"resume_limit_reached"})
    for state, (breaker, normal) in recovery().items():
        lines.append(f"| {state.value} | {_cell(breaker, drop)} | {_cell(normal, drop)} |")
    return "\n".join(lines) + "\n"


_WHERE = {"overview": "chart", "restart": "restart table", "internal": "table only"}


def table_markdown() -> str:
    """The transition table as a Markdown table (rows in the order the machine tries them)."""
    lines = [
        "| # | trigger | from | to | guards | action | drawn |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, row in enumerate(TRANSITIONS, start=1):
        sources = ", ".join(s.value for s in row.sources)
        dest = row.dest.value if row.dest else "(internal)"
        guards = ", ".join(_names(row.conditions)) or "—"
        action = _name(row.action) or "—"
        lines.append(
            f"| {index} | `{row.trigger.value}` | {sources} | {dest} | {guards} | {action}"
            f" | {_WHERE[where(row)]} |"
        )
    return "\n".join(lines) + "\n"


def readme(chart: str) -> str:
    """``statecharts/README.md``: the picture, the restart table and the full table."""
    return (
        "# Statecharts\n\n"
        "Generated from `updater_fsm/core/table.py` — the very table the running machine is built\n"
        "from — by `tope-updater statechart` (or `python -m statecharts.render`). Do not edit\n"
        "the generated files by hand: `tests/statecharts/test_fresh.py` fails when they are\n"
        "stale (the SVG carries the SHA-256 of the `updater.dot` it was rendered from;\n"
        "rendering it needs Graphviz: `apt-get install graphviz`).\n\n"
        "The picture is the overview; the tables below are the reference.\n\n"
        "![The updater's lifecycle: the happy path top to bottom, the rollback ladder beside"
        " it](updater.svg)\n\n"
        "Files: `updater.dot` → `updater.svg` (Graphviz), `updater.mmd` (the same overview in\n"
        "Mermaid; `GET /api/v1.0/statechart` serves it with the current state highlighted).\n"
        "Groups: "
        + "; ".join(f"**{g}**: {', '.join(s.value for s in m)}" for g, m in GROUPS.items())
        + ".\n"
        "`failed` is one state, but the edges into it say how the device stands: `= restored`\n"
        "(orange: a rollback put the previous or the factory version back, the error is\n"
        "`ROLLBACK_LEVEL_1/2_SUCCESS: v… (cause: …)`), `= NOT restored` (bold red:\n"
        "`ROLLBACK_FAILED`, service needed), or neither (a failure before the switch: the device\n"
        "runs what it ran; or in the updater's own update: the device runs the new version).\n\n"
        "<details><summary>Mermaid version</summary>\n\n"
        "```mermaid\n" + chart + "```\n\n"
        "</details>\n\n"
        "## What a restart does\n\n"
        "After a restart (power cut, crash) the engine sends `resume` in the journaled state.\n"
        "The crash-loop breaker rows come first: they fire when the updater died\n"
        "`resume_limit` times in a row in the same step. `stays`: the state is kept and the\n"
        "action resumes the work.\n\n" + recovery_markdown() + "\n"
        "## The transition table\n\n"
        "For each event the first row whose source matches and whose guards all pass fires.\n"
        "`drawn`: where the row is shown (the chart, the restart table, or only here: internal\n"
        "transitions keep the state and run the action).\n\n" + table_markdown()
    )


# --- Files ----------------------------------------------------------------------------


def render_all(out_dir: Path = HERE, svg: bool = True) -> list[Path]:
    """Write the Mermaid, DOT and README files, and ``updater.svg`` when ``dot`` exists.

    Without Graphviz the SVG is left as it is; a note on stderr says so (and whether the
    existing one is now stale).
    """
    chart = mermaid()
    dot_source = dot()
    files = {
        out_dir / "updater.mmd": chart,
        out_dir / "updater.dot": dot_source,
        out_dir / "README.md": readme(chart),
    }
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    written = list(files)
    if not svg:
        return written
    svg_path = out_dir / "updater.svg"
    dot_bin = shutil.which("dot")
    if dot_bin:
        rendered = subprocess.run(
            [dot_bin, "-Tsvg"], input=dot_source, capture_output=True, text=True, check=True
        ).stdout
        svg_path.write_text(stamp_svg(rendered, dot_source), encoding="utf-8")
        written.append(svg_path)
    else:
        old = svg_path.read_text(encoding="utf-8") if svg_path.exists() else ""
        problem = svg_problem(old, dot_source) if old else "does not exist"
        state = f"and {svg_path} {problem}" if problem else f"({svg_path} is still fresh)"
        print(
            f"Graphviz `dot` not found: {svg_path.name} NOT rendered {state}. "
            "Install it (apt-get install graphviz) and rerun `tope-updater statechart`.",
            file=sys.stderr,
        )
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
