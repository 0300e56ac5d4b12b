"""The update package format (docs/PACKAGE_FORMAT.md), one module per part of it.

``limits`` (the bounds a hostile package meets), ``destinations`` (where a module's file may
go: the install root, the extra roots), ``archive`` (the ZIP's structure, judged before and
while it is opened), ``manifest`` (``manifest.json`` read, normalised, typed and validated),
``extraction`` (a module's file or the updater bundle written out, size and digests
checked), ``delta`` (the per-file zstd patches of delta packages) and ``builder`` (the
host-side ``tope-updater package build``, which runs the device's reader on what it wrote).

The format knows nothing of the executors, the runner, the engine or the shells around
them (an import contract keeps it so); the manifest's value types are the core's
(:mod:`updater_fsm.core.manifest`).
"""
