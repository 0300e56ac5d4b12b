"""The committed statecharts must match the transition table the runtime uses."""

from __future__ import annotations

import re
from pathlib import Path

from statecharts import render
from updater_fsm.core.table import TRANSITIONS, State, Trigger


def test_committed_statecharts_are_fresh(tmp_path: Path) -> None:
    render.render_all(tmp_path, svg=False)
    for name in ("updater.mmd", "updater.dot", "README.md"):
        committed = (render.HERE / name).read_text(encoding="utf-8")
        regenerated = (tmp_path / name).read_text(encoding="utf-8")
        assert committed == regenerated, (
            f"statecharts/{name} is stale: run `tope-updater statechart` and commit the result"
        )


def test_committed_svg_was_rendered_from_the_current_dot() -> None:
    svg = (render.HERE / "updater.svg").read_text(encoding="utf-8")
    problem = render.svg_problem(svg, render.dot())
    assert problem is None, (
        f"statecharts/updater.svg {problem}: install Graphviz (apt-get install graphviz), "
        "run `tope-updater statechart` and commit the result"
    )


def test_svg_check_fails_on_a_modified_dot() -> None:
    source = render.dot()
    svg = render.stamp_svg('<?xml version="1.0"?>\n<svg width="1pt"></svg>\n', source)
    assert render.svg_problem(svg, source) is None
    assert render.svg_problem(svg, source.replace("idle", "idle2")) is not None
    assert render.svg_problem(svg, source + " ") is not None
    assert render.svg_problem("<svg></svg>", source) == "has no dot-sha256 stamp"


def test_every_row_is_accounted_for() -> None:
    """Each (row, source) is on the overview, in the restart table, or internal (table)."""
    drawn = {pair for edge in render.overview() for pair in edge.covers}
    restart = {
        (i, s) for s, (breaker, normal) in render.recovery().items() for i in breaker + normal
    }
    for index, row in enumerate(TRANSITIONS):
        for source in row.sources:
            pair = (index, source)
            place = render.where(row)
            if place == "overview":
                assert pair in drawn, f"row {index + 1} from {source} is not drawn"
            elif place == "restart":
                assert pair in restart, f"row {index + 1} from {source} not in the restart table"
            else:
                assert row.dest is None, f"row {index + 1} is neither drawn nor internal"
    assert drawn | restart <= {(i, s) for i, r in enumerate(TRANSITIONS) for s in r.sources}
    # The full table lists every row, numbered, with where it is drawn.
    table = render.table_markdown()
    numbered = re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)
    assert [int(n) for n in numbered] == list(range(1, len(TRANSITIONS) + 1))
    readme = (render.HERE / "README.md").read_text(encoding="utf-8")
    assert table in readme and render.recovery_markdown() in readme


def test_overview_edges_are_in_both_charts() -> None:
    dot, chart = render.dot(), render.mermaid()
    for edge in render.overview():
        assert f"{edge.tail_id} -> {edge.head.value} [" in dot
        assert f"{edge.tail_id} --> {edge.head.value} : " in chart
        for trigger, _guards in edge.parts:
            assert trigger in dot and trigger in chart
    # The overview leaves restarts out: they are the restart table's.
    assert Trigger.RESUME.value not in chart
    assert "current_job" not in chart


def test_groups_are_drawn_in_both_charts() -> None:
    assert render.GROUPS == {
        "install": (State.DEPLOYING, State.SWITCHING, State.HEALTH_CHECK),
        "rollback": (State.ROLLBACK_PREVIOUS, State.ROLLBACK_FACTORY),
        "selfupdate": (State.UPDATER_STAGING, State.UPDATER_SWITCHING, State.UPDATER_PROBATION),
    }
    dot, chart = render.dot(), render.mermaid()
    for group, members in render.GROUPS.items():
        cluster = dot.split(f"subgraph cluster_{group} {{", 1)[1].split("}", 1)[0]
        assert [s.value for s in State if f"    {s.value} [" in cluster] == [
            s.value for s in members
        ]
        assert f"{group} group = " + ", ".join(s.value for s in members) in chart
        for state in members:
            assert render.group_of(state) == group
            assert f"class {state.value} g_{group}" in chart
    assert render.group_of(State.IDLE) is None


def test_every_state_and_trigger_appears() -> None:
    chart, dot = render.mermaid(), render.dot()
    readme = (render.HERE / "README.md").read_text(encoding="utf-8")
    for state in State:
        assert f'state "{state.value}" as {state.value}' in chart
        assert f"  {state.value} [" in dot
    for row in TRANSITIONS:
        assert f"`{row.trigger.value}`" in readme


def test_current_state_is_highlighted() -> None:
    chart = render.mermaid(State.HEALTH_CHECK)
    assert "class health_check s_active" in chart
    assert "class idle s_active" not in chart
    assert "class idle s_default" in chart


def test_guard_and_action_names_may_be_callables() -> None:
    def package_fresh() -> bool:
        return True

    assert render._names(("same_package", package_fresh)) == ("same_package", "package_fresh")


def test_a_restored_device_and_a_broken_one_reach_failed_by_distinct_edges() -> None:
    """`failed` is one state; the edges into it say whether a version was restored."""
    from updater_fsm.core.decisions import Decisions

    assert all(hasattr(Decisions, action) for action in render.FAILED_OUTCOMES)
    into_failed = [e for e in render.overview() if e.head is State.FAILED]
    for edge in into_failed:
        outcomes = {render.failed_outcome(TRANSITIONS[i]) for i, _ in edge.covers}
        assert len(outcomes) == 1, f"{edge.tail_id} mixes {outcomes}"
    restored = {e.tail for e in into_failed if e.kind == render.RESTORED}
    assert restored == {State.ROLLBACK_PREVIOUS, State.ROLLBACK_FACTORY}
    not_restored = {e.tail for e in into_failed if e.kind == render.NOT_RESTORED}
    assert not_restored == {
        State.SWITCHING,
        State.HEALTH_CHECK,
        State.ROLLBACK_PREVIOUS,
        State.ROLLBACK_FACTORY,
    }
    dot, chart = render.dot(), render.mermaid()
    for text in (dot, chart):
        assert "= restored (the previous version runs)" in text
        assert "= restored (the factory version runs)" in text
        assert text.count("= NOT restored (service needed)") == 4
    assert "rollback_previous --> failed : rollback_ok [automatic] = restored" in chart
    assert "rollback_previous --> failed : rollback_failed [else] = NOT restored" in chart


def test_the_notes_into_a_state_are_gathered_into_one() -> None:
    edges = render.overview()
    from_notes = [e for e in edges if isinstance(e.tail, render.Note)]
    heads = [e.head for e in from_notes]
    assert len(heads) == len(set(heads)), "two notes point at the same state"
    (into_idle,) = [e for e in from_notes if e.head is State.IDLE]
    note = into_idle.tail
    assert isinstance(note, render.Note)
    assert [sources for sources, _, _ in note.lines] == [
        (State.READY,),
        (State.WAITING_IDLE,),
        (State.ROLLBACK_PREVIOUS, State.ROLLBACK_FACTORY),
        (State.DOWNLOADING, State.VERIFYING, State.READY, State.DEPLOYING),
        (State.IDLE, State.SUCCESS, State.FAILED),
    ]
    dot = render.dot()
    assert dot.count("-> idle [") == 2  # __start and the one gathered note
    for trigger in ("update_requested", "printer_free", "wait_expired", "cancel", "reset"):
        assert trigger in dot.split(f"  {note.id} [", 1)[1].split("\n", 1)[0]


def test_group_titles_are_on_top_and_labels_keep_clear_of_their_edge() -> None:
    dot = render.dot()
    for group in render.GROUPS:
        cluster = dot.split(f"subgraph cluster_{group} {{", 1)[1].split("}", 1)[0]
        assert "labelloc=t" in cluster
    # every edge label is a left-aligned table with a spacer cell on the edge's side
    for line in dot.splitlines():
        if " -> " in line and "label=<" in line:
            assert '<TD WIDTH="5"></TD><TD ALIGN="LEFT" BALIGN="LEFT">' in line, line
