"""Futures that nobody may await any more.

A future whose awaiters went away (a cancelled caller, a reader that left) still ends, and
if it ends with an exception asyncio logs "exception was never retrieved" when it is
collected. :func:`mark_retrieved`, as its done callback, says its outcome was seen.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["mark_retrieved"]


def mark_retrieved(future: asyncio.Future[Any]) -> None:
    """Mark ``future``'s outcome as seen (use as ``future.add_done_callback(mark_retrieved)``)."""
    if not future.cancelled():
        future.exception()
