"""Effect executors: the only code in ``updater_fsm`` that performs I/O.

One module per concern: ``download`` (HTTP streaming and hashing), ``verify`` (digests and
signatures), ``snapshot_store`` (the ``versions/`` layout and its links: init, switch,
rollback, garbage collection, checks), ``snapshot_staging`` (building a new snapshot from
a package), ``snapshot_trees`` (durable copies and removals of directory trees),
``external_files`` (files outside the install root, with backups), ``services``
(systemctl), ``commands`` (subprocesses, ``post_cmds``), ``health``, ``printer_probe`` (the
busy gate), ``self_update`` (the updater's own slots) and ``fleet_access``. The package
format they read is :mod:`updater_fsm.package`.
"""
