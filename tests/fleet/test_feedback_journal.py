"""fleet_ddi.feedback_journal on real files: the final feedback survives a restart until the
server has it, closed actions are remembered (a bounded number), and an unreadable file is
set aside, never guessed at nor fatal."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet_ddi.ddi_protocol import Execution, Feedback, Finished
from fleet_ddi.feedback_journal import KEEP_CLOSED, FeedbackJournal, FeedbackState

FAIL = Feedback("3", Execution.CLOSED, Finished.FAILURE, ("VALIDATION_ERROR: x", "running 1.0.0"))
OK = Feedback("4", Execution.CLOSED, Finished.SUCCESS, ("done", "running 1.1.0"), progress=(6, 6))


def test_empty_without_a_file(tmp_path: Path) -> None:
    journal = FeedbackJournal(tmp_path)
    assert journal.state == FeedbackState()
    assert not journal.path.exists()  # nothing written until there is something to keep


@pytest.mark.parametrize("feedback", [FAIL, OK])
def test_hold_survives_a_reload(tmp_path: Path, feedback: Feedback) -> None:
    FeedbackJournal(tmp_path).hold(feedback)
    # A crash between hold and close: the next process finds the feedback pending.
    again = FeedbackJournal(tmp_path)
    assert again.state.pending == feedback
    assert again.state.is_closed(feedback.action_id)  # never started again meanwhile
    assert again.state.closed == ()


def test_close_survives_a_reload(tmp_path: Path) -> None:
    journal = FeedbackJournal(tmp_path)
    journal.hold(OK)
    journal.close("4")
    assert journal.state == FeedbackState(None, ("4",), attributes_due=True)
    again = FeedbackJournal(tmp_path)
    assert again.state == FeedbackState(None, ("4",), attributes_due=True)
    assert again.state.is_closed("4") and not again.state.is_closed("3")


@pytest.mark.parametrize("feedback", [FAIL, OK])
def test_attributes_are_due_from_the_final_feedback_until_sent(
    tmp_path: Path, feedback: Feedback
) -> None:
    journal = FeedbackJournal(tmp_path)
    assert not journal.state.attributes_due
    journal.hold(feedback)  # one write: the feedback and the attributes to follow it
    assert FeedbackJournal(tmp_path).state.attributes_due
    journal.close(feedback.action_id)
    # A crash between the final feedback and the attributes: still due after the restart.
    assert FeedbackJournal(tmp_path).state.attributes_due
    journal.attributes_sent()
    assert FeedbackJournal(tmp_path).state == FeedbackState(None, (feedback.action_id,))


def test_a_cancel_closed_without_a_final_feedback_makes_no_attributes_due(tmp_path: Path) -> None:
    journal = FeedbackJournal(tmp_path)
    journal.close("9")
    assert not FeedbackJournal(tmp_path).state.attributes_due


def test_a_journal_written_before_the_attributes_mark_reads_as_nothing_due(
    tmp_path: Path,
) -> None:
    journal = FeedbackJournal(tmp_path)
    journal.path.parent.mkdir()
    journal.path.write_text(json.dumps({"schema": 1, "pending": None, "closed": ["4"]}))
    assert FeedbackJournal(tmp_path).state == FeedbackState(None, ("4",))


def test_close_of_another_action_keeps_the_pending_one(tmp_path: Path) -> None:
    journal = FeedbackJournal(tmp_path)
    journal.hold(FAIL)
    journal.close("9")  # a cancel answered for another action
    again = FeedbackJournal(tmp_path)
    assert again.state.pending == FAIL
    assert again.state.closed == ("9",)


def test_close_twice_is_remembered_once(tmp_path: Path) -> None:
    journal = FeedbackJournal(tmp_path)
    for action in ("1", "2", "1"):
        journal.close(action)
    assert FeedbackJournal(tmp_path).state.closed == ("2", "1")


def test_keep_closed_bound(tmp_path: Path) -> None:
    journal = FeedbackJournal(tmp_path)
    for n in range(KEEP_CLOSED + 10):
        journal.close(str(n))
    closed = FeedbackJournal(tmp_path).state.closed
    assert len(closed) == KEEP_CLOSED
    assert closed == tuple(str(n) for n in range(10, KEEP_CLOSED + 10))  # the newest kept
    state = FeedbackJournal(tmp_path).state
    assert not state.is_closed("9") and state.is_closed("10")
    assert len(json.loads(journal.path.read_bytes())["closed"]) == KEEP_CLOSED


def test_is_closed_semantics() -> None:
    assert not FeedbackState().is_closed("3")
    assert FeedbackState(pending=FAIL).is_closed("3")
    assert not FeedbackState(pending=FAIL).is_closed("4")
    assert FeedbackState(closed=("4",)).is_closed("4")
    assert not FeedbackState(closed=("4",)).is_closed("40")


def test_file_modes(tmp_path: Path) -> None:
    journal = FeedbackJournal(tmp_path)
    journal.hold(FAIL)
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.path.parent.stat().st_mode) == 0o700
    journal.close("3")
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600
    assert [p.name for p in journal.path.parent.iterdir()] == ["feedback.json"]  # no temp left


CORRUPT = [
    b"",
    b"{",
    b"\xff\xfe",
    b"null",
    b"[]",
    b'"feedback"',
    b'{"schema": 2, "pending": null, "closed": []}',
    b'{"schema": 1, "pending": "3", "closed": []}',
    b'{"schema": 1, "pending": {"action_id": "3"}, "closed": []}',
    b'{"schema": 1, "pending": {"action_id": "3", "execution": "gone", "finished": "none",'
    b' "details": []}, "closed": []}',
    b'{"schema": 1, "pending": {"action_id": "3", "execution": "closed", "finished": "none",'
    b' "details": [], "progress": [1]}, "closed": []}',
    b'{"schema": 1, "pending": null, "closed": 5}',
]


@pytest.mark.parametrize("content", CORRUPT)
def test_corrupt_file_is_set_aside(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fleet" / "feedback.json"
    path.parent.mkdir()
    path.write_bytes(content)
    journal = FeedbackJournal(tmp_path)
    assert journal.state == FeedbackState()
    assert not path.exists()
    (aside,) = path.parent.glob("feedback.json.corrupt-*")
    assert aside.read_bytes() == content  # kept for a person to look at
    # And the journal works on: the next hold is durable again.
    journal.hold(OK)
    assert FeedbackJournal(tmp_path).state.pending == OK


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=200)
@given(
    st.binary(max_size=200)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        *("schema", "pending", "closed", "action_id"),
                        *("execution", "finished", "details", "progress"),
                    ]
                ),
                inner,
                max_size=5,
            )
        ),
        max_leaves=20,
    ).map(lambda v: json.dumps({"schema": 1, **v} if isinstance(v, dict) else v).encode())
)
def test_any_file_content_loads_or_is_set_aside(tmp_path: Path, content: bytes) -> None:
    base = tmp_path / str(abs(hash(content)))
    path = base / "fleet" / "feedback.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    state = FeedbackJournal(base).state  # never raises
    assert isinstance(state, FeedbackState)
    if path.exists():  # kept: it was understood, and saving it again gives the same state
        journal = FeedbackJournal(base)
        journal.close("never-seen")
        assert FeedbackJournal(base).state.pending == state.pending
    else:
        assert state == FeedbackState()
        assert list(path.parent.glob("feedback.json.corrupt-*"))
