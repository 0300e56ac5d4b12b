"""The final feedback of each fleet action, durable until the server has it.

hawkBit must never see an action's outcome twice or lose it. The poller therefore writes a
final feedback here (temp, fsync, rename, fsync dir) *before* sending it, and marks the
action closed once the server answered 2xx — or 410 Gone, the server's word for "that action
is already closed". A restart in between finds the feedback pending and, before sending it
again, asks the server whether the action is still open: if not, the first send arrived
and nothing more is sent. The closed action ids (the last :data:`KEEP_CLOSED`) are kept so
the engine's journaled job, which still names its action after a restart, never produces a
second final feedback.

The target's attributes (``current_version``…) must show the version the device runs once
an action has ended, and hawkBit does not always ask for them (never after a failure, and
after a success only at the next poll, minutes later). So holding a final feedback also
marks the attributes due, in the same write; the poller sends them right after the final
feedback and clears the mark once the server has them. A restart in between finds them
still due and sends them at its first poll (``PUT configData`` merges: sending twice is
harmless, never sending is not).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import structlog

from fleet_ddi.ddi_protocol import Execution, Feedback, Finished
from updater_fsm import durable

_log = structlog.get_logger(__name__)
#: How many closed action ids are remembered (a device sees a few actions a month).
KEEP_CLOSED = 64
_SCHEMA = 1


@attrs.frozen
class FeedbackState:
    """The journal's content: a final feedback not yet delivered, the closed actions, and
    whether the target's attributes are to be sent again (an action ended since)."""

    pending: Feedback | None = None
    closed: tuple[str, ...] = ()
    attributes_due: bool = False

    def is_closed(self, action_id: str) -> bool:
        return action_id in self.closed or (
            self.pending is not None and self.pending.action_id == action_id
        )


def _feedback_json(fb: Feedback) -> dict[str, Any]:
    return {
        "action_id": fb.action_id,
        "execution": fb.execution.value,
        "finished": fb.finished.value,
        "details": list(fb.details),
        "progress": list(fb.progress) if fb.progress else None,
    }


def _feedback_from(data: dict[str, Any]) -> Feedback:
    progress = data.get("progress")
    return Feedback(
        action_id=str(data["action_id"]),
        execution=Execution(data["execution"]),
        finished=Finished(data["finished"]),
        details=tuple(str(d) for d in data["details"]),
        progress=(int(progress[0]), int(progress[1])) if progress else None,
    )


class FeedbackJournal:
    """``<state dir>/fleet/feedback.json``."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir / "fleet"
        self.path = self._dir / "feedback.json"
        self.state = self._load()

    def _load(self) -> FeedbackState:
        try:
            data = json.loads(self.path.read_bytes())
            if data.get("schema") != _SCHEMA:
                raise ValueError(f"schema {data.get('schema')!r}")
            pending = data.get("pending")
            return FeedbackState(
                pending=_feedback_from(pending) if pending else None,
                closed=tuple(str(a) for a in data.get("closed", [])),
                # absent in a journal written before it existed: nothing was due then
                attributes_due=data.get("attributes_due", False) is True,
            )
        except FileNotFoundError:
            return FeedbackState()
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            # Set aside, never guessed: the engine's journal still names the job's action,
            # so an unfinished action's outcome is rebuilt from it; at worst a final
            # feedback is asked about again (the server says whether the action is open).
            aside = self.path.with_name(f"feedback.json.corrupt-{self.path.stat().st_mtime_ns}")
            self.path.replace(aside)
            _log.error("fleet feedback journal unreadable: set aside", error=str(exc))
            return FeedbackState()

    def _save(self, state: FeedbackState, point: str) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {
            "schema": _SCHEMA,
            "pending": _feedback_json(state.pending) if state.pending else None,
            "closed": list(state.closed[-KEEP_CLOSED:]),
            "attributes_due": state.attributes_due,
        }
        durable.atomic_write_bytes(
            self.path, json.dumps(data, indent=1).encode(), mode=0o600, point=point
        )
        self.state = state

    def hold(self, feedback: Feedback) -> None:
        """Journal ``feedback`` as the pending final feedback (before sending it); the
        attributes are due from now on."""
        self._save(
            attrs.evolve(self.state, pending=feedback, attributes_due=True), "fleet:final_held"
        )

    def close(self, action_id: str) -> None:
        """The server has the action's outcome (or closed it itself): never send again."""
        pending = self.state.pending
        if pending is not None and pending.action_id == action_id:
            pending = None
        closed = (*tuple(a for a in self.state.closed if a != action_id), action_id)
        state = attrs.evolve(self.state, pending=pending, closed=closed[-KEEP_CLOSED:])
        self._save(state, "fleet:action_closed")

    def attributes_sent(self) -> None:
        """The server has the attributes as they are since the last action ended."""
        if self.state.attributes_due:
            self._save(attrs.evolve(self.state, attributes_due=False), "fleet:attributes_sent")
