"""tope-updater's core: a pure finite-state machine, its journal, and the effect executors.

The decision logic (``table``, ``machine``) performs no I/O. Everything that touches the
network, the disk or systemd lives in ``updater_fsm.ops`` and is driven by the ``engine``.
"""

__all__: list[str] = []
