"""The fleet poller: tope-updater as an Eclipse hawkBit device (DDI API v1).

One more source of commands for the same engine, next to the HTTP API (``http_shell``): it
reaches the updater only through :mod:`updater_fsm.control`, like every source (an import
contract in ``pyproject.toml`` checks it).

* :mod:`.ddi_protocol` — the DDI resources as values (pure: parsing, feedback bodies);
* :mod:`.ddi_client` — HTTP to the server (bounded answers, timeouts, the device's token);
* :mod:`.action_plan` — what the device does about an action, given the engine's snapshot
  (pure);
* :mod:`.feedback_journal` — the final feedback of each action, durable until delivered;
* :mod:`.controller_id` — the device's default controller id;
* :mod:`.poller` — the loop that ties them together.
"""
