"""Effect executors: the only code in ``updater_fsm`` that performs I/O.

One module per concern: ``download`` (HTTP streaming and hashing), ``verify`` (digests and
signatures), ``package`` (manifest and safe ZIP reading), ``package_build`` (the builder),
``snapshots`` (the ``versions/`` layout), ``services`` (systemctl) and ``health``.
"""
