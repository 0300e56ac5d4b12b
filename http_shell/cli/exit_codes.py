"""The exit statuses of ``tope-updater``.

0 success; 1 the operation failed (an API ``code`` other than 200, a ``--watch`` whose job
did not end as asked — a failed update, even one rolled back, a cancel —, problems found by
``verify-setup``); 2 bad usage or configuration (for ``serve`` also an install root ``init``
never ran on: systemd does not restart it after 2); 3 another updater already runs on the
same state directory.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3
