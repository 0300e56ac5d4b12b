"""Versions: one type, one parser.

A version is three dot-separated decimal numbers, ``MAJOR.MINOR.PATCH`` (``1.2.3``), in
ASCII digits, at most :data:`VERSION_MAX_LENGTH` characters. It names a snapshot directory
(``versions/v1.2.3``), so the text itself is the identity (``1.02.3`` and ``1.2.3`` are
different snapshots); versions are *ordered* numerically, so ``1.10.0`` is newer than
``1.9.0``. Every version that enters the updater — a request body, a manifest, a package
build, a snapshot directory name, a link target — goes through :meth:`Version.parse`.
People may type ``v1.2.3`` (as the directories spell it): the edges that take typed
versions (the CLI, request bodies) drop the ``v`` with :func:`bare_version` first.
"""

from __future__ import annotations

import re

import attrs

#: The pattern, in syntax Python's ``re`` and ECMA-262 (the OpenAPI document's JSON Schema)
#: read alike: ``[0-9]``, since Python's ``\d`` also matches non-ASCII digits. Python
#: matches it with ``fullmatch``: ``$`` alone would also accept a trailing newline.
VERSION_PATTERN = r"^[0-9]+\.[0-9]+\.[0-9]+$"
VERSION_MAX_LENGTH = 64
_VERSION = re.compile(VERSION_PATTERN)
#: A version as people type it: the bare form, or with the ``v`` the snapshot directories
#: and the device-api reports spell it with (``v1.2.3``). :func:`bare_version` drops it.
#: The typed text is at most :data:`VERSION_MAX_LENGTH` characters too, ``v`` included.
TYPED_VERSION_PATTERN = r"^v?[0-9]+\.[0-9]+\.[0-9]+$"


def bare_version(text: str) -> str:
    """``text`` without the leading ``v`` people type (``v1.2.3`` → ``1.2.3``), else as
    given: versions are normalised at the edges (the CLI, request bodies), the updater
    itself only knows the bare form."""
    return text[1:] if text[:1] == "v" and text[1:2].isdigit() else text


class InvalidVersion(ValueError):
    """Not a ``MAJOR.MINOR.PATCH`` version; the message says what was given."""


@attrs.frozen
class Version:
    """A parsed version (build one with :meth:`parse`)."""

    text: str

    @classmethod
    def parse(cls, text: object) -> Version:
        """The version ``text`` names, or :class:`InvalidVersion`."""
        if (
            not isinstance(text, str)
            or len(text) > VERSION_MAX_LENGTH
            or not _VERSION.fullmatch(text)
        ):
            shown = repr(text)[:40] if isinstance(text, str) else type(text).__name__
            raise InvalidVersion(f"must look like 1.2.3 (MAJOR.MINOR.PATCH), got {shown}")
        return cls(text)

    @classmethod
    def is_valid(cls, text: object) -> bool:
        try:
            cls.parse(text)
        except InvalidVersion:
            return False
        return True

    @property
    def key(self) -> tuple[int, int, int]:
        """Numeric sort key: ``1.10.0`` after ``1.9.0``."""
        major, minor, patch = (int(part) for part in self.text.split("."))
        return major, minor, patch

    def is_older_than(self, other: Version) -> bool:
        return self.key < other.key

    def __str__(self) -> str:
        return self.text
