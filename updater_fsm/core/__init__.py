"""The decision core: pure values and the pure state machine, no I/O.

Everything here is a function of its inputs: the transition table (:mod:`.table`), the
machine that evaluates it (:mod:`.machine`), the events it accepts (:mod:`.events`), the
effects it asks for (:mod:`.effects`), the journaled record (:mod:`.record`), the progress
snapshot (:mod:`.progress`), error codes (:mod:`.errors`), manifest value types
(:mod:`.manifest`) and the delivery policy of device-api reports (:mod:`.report_outbox`:
the reporter in ``http_shell`` only sends what it decides, when it decides). Nothing here
imports asyncio, aiohttp, subprocess or ``os``; the import contracts in ``pyproject.toml``
(run by ``./dev.sh test``) keep it that way.
"""
