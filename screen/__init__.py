"""``tope-updater screen``: the full-screen progress display at the printer.

A separate process and a client of the updater's HTTP API only (an import contract keeps it
away from ``updater_fsm`` and ``http_shell``). Split like h11/httpcore:

* :mod:`screen.catalogue` — every string a person reads, in English and Simplified Chinese;
* :mod:`screen.view` — pure: a ``/progress`` snapshot (+ language) → what to show
  (:class:`~screen.view.View`: texts, bar fraction, outcome, colours);
* :mod:`screen.follower` — the small blocking client (HTTP/1.0 on a socket, in a thread):
  ``GET /events`` (SSE), reconnecting when the updater restarts, polling ``GET /progress``
  when the stream is unavailable;
* :mod:`screen.render` — thin pygame-ce (SDL2) drawing of a view, the "Done" button and the
  countdown; :mod:`screen.app` wires them together.
"""
