"""Hiding the credentials of URLs wherever they are shown or logged (issue 10).

A ``package_url`` such as ``http://user:secret@host/p.zip`` is used as given for the download
itself (and kept in the journal, which is root-only, ``0600``, so a restarted updater can
resume), but everything a user or another process can see — ``/progress``, ``/events``,
device-api reports, the log file, error details — shows ``http://***@host/p.zip``.
"""

from __future__ import annotations

import re

#: ``scheme://userinfo@``: the userinfo is everything of the authority (which ends at the
#: first ``/``, ``?``, ``#`` or whitespace) up to its last ``@``, so an unescaped ``@`` in a
#: password does not leave part of the password behind.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#\s]*@")


def redact_url(url: str) -> str:
    """``url`` with the userinfo (``user:secret@``) of every URL in it replaced by ``***@``.

    Pure. Works on a bare URL and on any text that contains URLs (an error message, a log
    line); the host, path and everything else stay as they were.
    """
    return _USERINFO.sub(r"\1***@", url)
