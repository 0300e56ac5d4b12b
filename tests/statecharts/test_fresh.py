"""The committed statecharts must match the transition table the runtime uses."""

from __future__ import annotations

from pathlib import Path

from statecharts import render
from updater_fsm.core.table import TRANSITIONS, State


def test_committed_statecharts_are_fresh(tmp_path: Path) -> None:
    render.render_all(tmp_path)
    for name in ("updater.mmd", "updater.dot", "README.md"):
        committed = (render.HERE / name).read_text(encoding="utf-8")
        regenerated = (tmp_path / name).read_text(encoding="utf-8")
        assert committed == regenerated, (
            f"statecharts/{name} is stale: run `tope-updater statechart` and commit the result"
        )


def test_chart_shows_every_state_and_trigger() -> None:
    chart = render.mermaid()
    for state in State:
        assert f'state "{state.value}" as {state.value}' in chart
    for row in TRANSITIONS:
        assert row.trigger.value in chart


def test_current_state_is_highlighted() -> None:
    chart = render.mermaid(State.HEALTH_CHECK)
    assert "class health_check s_active" in chart
    assert "class idle s_active" not in chart
