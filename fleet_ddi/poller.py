"""The DDI poller: asks the fleet server what to do, drives the engine, reports back.

One task, one loop. Each turn it polls the controller base resource when the interval the
server asked for (bounded by ``ddi_poll_min_s``/``ddi_poll_max_s``, ±10 % jitter) has
passed, then looks at the engine's snapshot and does what :mod:`.action_plan` says. Between
turns it sleeps until the next poll or the next snapshot, so feedback follows the job
without polling the engine. It drives the updater only through
:class:`~updater_fsm.control.UpdaterControl` — the same events, the same 409 rules as
device-api's requests: one machine, one job at a time.

Crash safety: the job's action id is in the engine's journal (the job carries it); the
final feedback is in :class:`~fleet_ddi.feedback_journal.FeedbackJournal` before it is sent,
with the mark that the target's attributes are due again (sent right after it). A restarted
poller rebuilds everything else from the two.

Between polls the updater may exit (the fleet wake-up, ``http_shell/daemon/wake.py``): it
asks :meth:`FleetPoller.hold_reason` whether anything of the fleet's is in flight and
:meth:`FleetPoller.seconds_to_next_poll` how long until the next poll, and before leaving
has :meth:`FleetPoller.save_schedule` journal when that poll is due
(:mod:`.poll_schedule`); the next poller starts from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

import attrs
import structlog

from fleet_ddi.action_plan import (
    Step,
    answer_cancel,
    downloaded_feedback,
    final_feedback,
    next_step,
    progress_feedback,
)
from fleet_ddi.controller_id import default_controller_id, device_model
from fleet_ddi.ddi_client import DdiClient, DdiUnavailable
from fleet_ddi.ddi_protocol import (
    ControllerBase,
    DdiProtocolError,
    Deployment,
    Execution,
    Feedback,
    Finished,
    Handling,
    parse_cancel,
    parse_deployment,
)
from fleet_ddi.feedback_journal import FeedbackJournal
from fleet_ddi.poll_schedule import PollSchedule
from updater_fsm.config import Config
from updater_fsm.control import (
    CANCELLABLE_STATES,
    Cancel,
    DownloadRequested,
    Snapshot,
    State,
    UpdaterControl,
    UpdateRequested,
    visible,
)
from updater_fsm.faults import crash_point
from updater_fsm.ops.self_update import running_version

_log = structlog.get_logger(__name__)
#: A running job's progress is reported on every state change, and otherwise this often.
PROGRESS_EVERY_S = 10.0
_JITTER = 0.1
_ENDED = (State.SUCCESS, State.FAILED, State.IDLE)


@attrs.define
class PollerStats:
    """What ``/healthz`` shows of the poller."""

    controller_id: str
    polls: int = 0
    failed_polls: int = 0
    feedback_sent: int = 0
    last_error: str | None = None
    action: str | None = None


class FleetPoller:
    """Poll ``config.ddi_url`` for ``control`` until cancelled (see the module docstring)."""

    def __init__(
        self,
        control: UpdaterControl,
        config: Config,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._control = control
        self._config = config
        self._rng = rng or random.Random()
        self._clock = clock
        controller_id = config.ddi_controller_id or default_controller_id()
        self.stats = PollerStats(controller_id)
        self._client = DdiClient(config, controller_id)
        self._journal = FeedbackJournal(config.state_path)
        # A final feedback found on disk may have reached the server before the crash: ask
        # the server whether its action is still open before sending it again.
        self._pending_unsure = self._journal.state.pending is not None
        self._deployment: Deployment | None = None
        # When the poll is due that an earlier updater, exiting between polls, left for us
        # (none: at once, as at every start before), and how many polls had failed.
        self._schedule = PollSchedule(config.state_path)
        scheduled = self._schedule.load()
        self._next_poll = clock() + scheduled.due_in_s
        self._wait_s = scheduled.due_in_s
        self._failed_polls = scheduled.failed_polls
        self._in_turn = False
        self._progress_sent: tuple[str, State, float] | None = None
        self._install_asked_for: int | None = None
        self._said_once: set[tuple[str, str]] = set()
        self._cancels_answered: set[str] = set()

    @property
    def controller_id(self) -> str:
        return self.stats.controller_id

    # ---- the loop ----------------------------------------------------------------------
    async def run(self) -> None:
        await self._client.open()
        subscription = self._control.subscribe(16)
        _log.info(
            "fleet poller started",
            url=self._client.base_url,
            controller_id=self.controller_id,
            first_poll_in_s=round(self.seconds_to_next_poll(), 1),
        )
        try:
            while True:
                self._in_turn = True
                try:
                    if self._clock() >= self._next_poll:
                        self._wait_s = await self._poll()
                        self._next_poll = self._clock() + self._wait_s
                    await self._follow()
                except DdiUnavailable as exc:
                    self._note_error(exc)
                except Exception as exc:  # never let one bad turn end the fleet's polling
                    _log.exception("fleet poller turn failed")
                    self.stats.last_error = visible(f"{type(exc).__name__}: {exc}", 500)
                    # A poll that raised set no next one: wait at least the floor, never
                    # poll again at once (a bug must not become a loop hammering the server).
                    floor = self._interval(self._config.ddi_poll_min_s)
                    if self._clock() + floor > self._next_poll:
                        self._wait_s = floor
                        self._next_poll = self._clock() + floor
                finally:
                    self._in_turn = False
                wait = max(0.0, self._next_poll - self._clock())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(subscription.get(), wait)
        finally:
            subscription.close()
            await self._client.aclose()

    # ---- between polls (the fleet wake-up) ------------------------------------------------
    def seconds_to_next_poll(self) -> float:
        """How long until the next poll is due (0: due now)."""
        return max(0.0, self._next_poll - self._clock())

    def hold_reason(self) -> str | None:
        """What of the fleet's is in flight, so that the updater must not exit now; None
        when nothing is (an exit until the next poll loses nothing)."""
        if self._in_turn:
            return "fleet poll in progress"
        journal = self._journal.state
        if journal.pending is not None:
            return "fleet feedback pending"
        if journal.attributes_due:
            return "fleet attributes due"
        deployment = self._deployment
        if (
            deployment is not None
            and deployment.download is not Handling.SKIP
            and not journal.is_closed(deployment.action_id)
        ):
            return "fleet deployment in flight"
        owner = self._control.snapshot.fleet_action
        if owner is not None and not journal.is_closed(owner):
            return "fleet action open"
        return None

    def save_schedule(self) -> float:
        """Journal when the next poll is due (before an exit between polls); returns the
        seconds until then."""
        due_in = self.seconds_to_next_poll()
        self._schedule.save(due_in, max(self._wait_s, due_in), self._failed_polls)
        return due_in

    def _note_error(self, exc: Exception) -> None:
        self.stats.last_error = visible(str(exc), 500)  # the server's words: outside text
        _log.warning("fleet server", error=str(exc))

    def _interval(self, asked_s: float) -> float:
        low, high = self._config.ddi_poll_min_s, self._config.ddi_poll_max_s
        return min(high, max(low, asked_s)) * self._rng.uniform(1 - _JITTER, 1 + _JITTER)

    async def _poll(self) -> float:
        """One poll; returns the seconds until the next."""
        self.stats.polls += 1
        try:
            base = await self._client.controller_base()
        except DdiUnavailable as exc:
            self._failed_polls += 1
            self.stats.failed_polls += 1
            self._note_error(exc)
            # Back off from the floor, doubling, up to the ceiling: a server that is down
            # is not hammered, one that comes back is found soon.
            backoff = self._config.ddi_poll_min_s * 2 ** min(self._failed_polls, 16)
            return self._interval(min(backoff, self._config.ddi_poll_max_s))
        self._failed_polls = 0
        self._install_asked_for = None  # a refused install (409) is asked again
        try:
            await self._act_on(base)
        except (DdiUnavailable, DdiProtocolError) as exc:  # e.g. a cancelAction without stopId
            self._note_error(exc)
        except Exception as exc:  # a full disk for the feedback journal, a bug: next poll
            _log.exception("fleet poll failed")
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
        return self._interval(base.sleep_s)

    async def _act_on(self, base: ControllerBase) -> None:
        pending = self._journal.state.pending
        if pending is not None:
            if self._pending_unsure and not base.offers(pending.action_id):
                _log.info("fleet action already closed on the server", action=pending.action_id)
                self._journal.close(pending.action_id)
            else:
                await self._deliver_final(pending)
        # Asked for (first contact, after a success), or due since an action ended and not
        # yet sent (a restart or an unreachable server came in between).
        if base.config_data_url is not None or self._journal.state.attributes_due:
            await self._send_attributes(base.config_data_url)
        if base.cancel_url is not None and base.cancel_action is not None:
            await self._on_cancel(base.cancel_url, base.cancel_action)
            return
        if base.deployment_url is None or base.deployment_action is None:
            self._deployment = None
            return
        action = base.deployment_action
        if self._journal.state.is_closed(action):
            return  # our final feedback is on its way or the server is a poll behind
        body = await self._client.get_json(base.deployment_url)
        try:
            self._deployment = parse_deployment(body, action)
        except DdiProtocolError as exc:
            self._deployment = None
            await self._fail(action, f"VALIDATION_ERROR: {exc}")
            return
        self.stats.action = action

    async def _fail(self, action: str, error: str) -> None:
        """Close ``action`` with ``failure``: ``error`` and the version the device runs."""
        running = f"running {self._control.links.current or 'no version'}"
        await self._finish(Feedback(action, Execution.CLOSED, Finished.FAILURE, (error, running)))

    async def _send_attributes(self, url: str | None = None) -> None:
        """``PUT configData`` (to the link the server gave, else to the controller's own):
        the attributes as they are now; no longer due once the server has them."""
        attributes = self._attributes()
        try:
            await self._client.put_attributes(url or self._client.config_data_url, attributes)
        except DdiUnavailable as exc:
            # Still due: again at the next poll. Never in the way of a deployment or a
            # final feedback (a server refusing them must not stop the device's updates).
            self._note_error(exc)
            return
        self._journal.attributes_sent()
        _log.info("fleet attributes sent", current_version=attributes["current_version"])

    def _attributes(self) -> dict[str, str]:
        links = self._control.links
        return {
            "model": device_model(self._config.compatible),
            "current_version": links.current or "",
            "previous_version": links.previous or "",
            "factory_version": links.factory or "",
            "updater_version": running_version(),
        }

    # ---- following the engine -------------------------------------------------------------
    async def _follow(self) -> None:
        snapshot = self._control.snapshot
        owner = snapshot.fleet_action
        if (
            owner is not None
            and snapshot.state in _ENDED
            and not self._journal.state.is_closed(owner)
        ):
            await self._finish(final_feedback(owner, snapshot))
            return
        deployment = self._deployment
        if deployment is None or self._journal.state.is_closed(deployment.action_id):
            return
        step = next_step(deployment, snapshot)
        if step is Step.DOWNLOAD:
            if deployment.download is Handling.SKIP:
                return
            await self._start(deployment)
        elif step is Step.WAIT_FOR_DEVICE:
            text = f"waiting: the device is busy with another job ({snapshot.state.value})"
            await self._say_once(
                "busy",
                Feedback(deployment.action_id, Execution.PROCEEDING, Finished.NONE, (text,)),
            )
        elif step is Step.REPORT_PROGRESS:
            await self._report_progress(deployment.action_id, snapshot)
        elif step is Step.INSTALL:
            await self._install(deployment, snapshot)
        elif step is Step.REPORT_DOWNLOADED:
            feedback = downloaded_feedback(deployment, snapshot)
            if deployment.download_only:
                await self._finish(feedback)  # `downloaded` closes a download-only action
            else:
                await self._say_once("downloaded", feedback)

    async def _start(self, deployment: Deployment) -> None:
        request = deployment.request
        if deployment.signature_url is not None:
            # The package's signature, as device-api's package_signature (checked by
            # verification against trusted_key like any other).
            signature = await self._client.get_small_text(deployment.signature_url, 1024)
            request = attrs.evolve(request, package_signature=signature)
        decision = await self._control.submit(
            DownloadRequested(request, fleet_action=deployment.action_id)
        )
        if decision.accepted or decision.reply.code == 409:
            return  # 409: device-api's job got there first; asked again at the next turn
        await self._fail(deployment.action_id, decision.reply.msg)

    async def _install(self, deployment: Deployment, snapshot: Snapshot) -> None:
        if self._install_asked_for == snapshot.job_id:
            return
        self._install_asked_for = snapshot.job_id
        decision = await self._control.submit(UpdateRequested(deployment.request.version))
        reply = decision.reply
        if decision.accepted or reply.code == 409:
            return  # 409 (busy printer under `refuse`, another job): again at the next poll
        if reply.code == 410:  # the verified package outlived its trust window: fetch again
            await self._start(deployment)
            return
        await self._fail(deployment.action_id, reply.msg)

    async def _report_progress(self, action: str, snapshot: Snapshot) -> None:
        now = self._clock()
        last = self._progress_sent
        if (
            last is not None
            and last[0] == action
            and last[1] is snapshot.state
            and now - last[2] < PROGRESS_EVERY_S
        ):
            return
        self._progress_sent = (action, snapshot.state, now)
        await self._send("deploymentBase", progress_feedback(action, snapshot))

    async def _say_once(self, topic: str, feedback: Feedback) -> None:
        """Send ``feedback`` unless this action was already told about ``topic``."""
        if (feedback.action_id, topic) in self._said_once:
            return
        self._said_once.add((feedback.action_id, topic))
        await self._send("deploymentBase", feedback)

    # ---- cancel -------------------------------------------------------------------------
    async def _on_cancel(self, cancel_url: str, cancel_id: str) -> None:
        if cancel_id in self._cancels_answered:
            return
        stop_id = parse_cancel(await self._client.get_json(cancel_url))
        snapshot = self._control.snapshot
        answer = answer_cancel(cancel_id, stop_id, snapshot)
        if answer is None:
            return  # the job ended: its final feedback (sent above) answers the server
        if answer.stop_job:
            # Closed first: the cancelled job must never be reported as a failed update.
            self._journal.close(stop_id)
            # (waiting for the printer: one cancel back to ready, a second to idle)
            while self._control.snapshot.state in CANCELLABLE_STATES:
                decision = await self._control.submit(Cancel())
                if not decision.accepted:
                    break
        status = await self._send("cancelAction", answer.feedback)
        self._cancels_answered.add(cancel_id)
        if answer.feedback.execution is Execution.CLOSED:
            if not answer.stop_job:  # a stopped job's action was closed before the cancel
                self._journal.close(stop_id)
            self._deployment = None
        _log.info(
            "fleet cancel answered",
            action=stop_id,
            execution=answer.feedback.execution.value,
            status=status,
        )

    # ---- feedback ---------------------------------------------------------------------------
    async def _send(self, resource: str, feedback: Feedback) -> int:
        """POST a feedback that is not an action's last word; the HTTP status."""
        status = await self._client.send_feedback(resource, feedback)
        self.stats.feedback_sent += 1
        return status

    async def _finish(self, feedback: Feedback) -> None:
        """The action's last word: journaled, then sent (exactly once, see the journal)."""
        self._journal.hold(feedback)
        self._pending_unsure = False
        await self._deliver_final(feedback)

    async def _deliver_final(self, feedback: Feedback) -> None:
        crash_point("fleet:final_sending")
        try:
            status = await self._client.send_feedback("deploymentBase", feedback)
        except DdiUnavailable:
            self._pending_unsure = True  # the server may have it: ask before sending again
            raise
        crash_point("fleet:final_sent")
        self.stats.feedback_sent += 1
        _log.info(
            "fleet action closed",
            action=feedback.action_id,
            execution=feedback.execution.value,
            finished=feedback.finished.value,
            details=list(feedback.details),
            status=status,
        )
        self._journal.close(feedback.action_id)
        self._pending_unsure = False
        if self._deployment is not None and self._deployment.action_id == feedback.action_id:
            self._deployment = None
        # The version the device now runs, for hawkBit's view of the target (due since the
        # feedback was held: a crash or a failed PUT here sends them at the next poll).
        await self._send_attributes()
