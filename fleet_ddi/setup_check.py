"""``tope-updater verify-setup`` for the fleet: can this device reach its hawkBit, as itself?"""

from __future__ import annotations

import attrs

from fleet_ddi.controller_id import default_controller_id
from fleet_ddi.ddi_client import DdiClient, DdiUnavailable
from updater_fsm.config import Config


@attrs.frozen
class FleetCheck:
    """What one poll of the controller base resource said."""

    controller_id: str
    url: str
    problem: str | None = None
    sleep_s: float | None = None
    open_action: str | None = None

    def describe(self) -> str:
        if self.problem is not None:
            return f"fleet server {self.url}: PROBLEM: {self.problem}"
        action = f", action {self.open_action} open" if self.open_action else ""
        return f"fleet server {self.url}: reachable, polling every {self.sleep_s:.0f} s{action}"


async def check_fleet_server(config: Config) -> FleetCheck:
    """Poll once with the configured id, token and CA file (nothing is changed)."""
    controller_id = config.ddi_controller_id or default_controller_id()
    client = DdiClient(config, controller_id)
    await client.open()
    try:
        base = await client.controller_base()
    except DdiUnavailable as exc:
        problem = str(exc)
        if exc.status in (401, 403):
            problem = f"the server refused this device's credentials (HTTP {exc.status}): {exc}"
        return FleetCheck(controller_id, client.base_url, problem=problem)
    finally:
        await client.aclose()
    return FleetCheck(
        controller_id,
        client.base_url,
        sleep_s=base.sleep_s,
        open_action=base.deployment_action or base.cancel_action,
    )
