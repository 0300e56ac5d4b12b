"""What a download does with an HTTP response, judged before a byte of its body is written.

Pure: plain values in (the status, the headers, the offset the request resumed from, the
validators the download holds), a :class:`Judgement` out. The executor
(:mod:`updater_fsm.ops.download`) acts on it: drops the partial file, retries, fails, or
streams the body.

The rules:

* ``416`` to a resume: the partial file is dropped and the next attempt, at once, starts
  from zero — unless the server announces another total size than the package's
  (``PACKAGE_SIZE_MISMATCH``); ``416`` without a ``Range`` is fatal.
* ``408``, ``429`` and ``5xx`` are transient (``Retry-After`` is handed on); any other
  status but ``200``/``206`` is fatal.
* ``206`` needs a ``Content-Range`` (else transient) whose total, when known, is the
  package's size (else fatal), that starts at the requested offset, ends at the last byte
  and comes with unchanged validators (the ETag when both sides have one, else the
  Last-Modified date): otherwise the part is of another file or place — never spliced, the
  partial file is dropped and the next attempt starts at once from zero.
* ``200`` carries the whole file: to a resume it means starting over from zero (the partial
  file is dropped first); an announced ``Content-Length`` other than the package's size is
  fatal (after the drop).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping

import attrs

from updater_fsm.core.errors import ErrorCode

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_DECIMAL = re.compile(r"[0-9]+")


class Verdict(enum.Enum):
    """What to do with a response."""

    #: Stream its body from :attr:`Judgement.start` (the requested offset).
    ACCEPT = "accept"
    #: Drop the partial file, then stream its body from zero (the whole file came).
    RESTART_FROM_ZERO = "restart_from_zero"
    #: This attempt failed; another one may not (after the backoff, or at once).
    TRANSIENT = "transient"
    #: The download fails with :attr:`Judgement.code`.
    FATAL = "fatal"


@attrs.frozen
class Judgement:
    """The verdict on one response and what the executor needs to carry it out.

    Attributes:
        verdict: what to do.
        reason: for a transient or fatal verdict, the error detail; for a restart from
            zero, why (for the log).
        code: the error code of a fatal verdict.
        discard: why the partial file must be dropped before anything else (``None``: keep
            it). Always set for :attr:`Verdict.RESTART_FROM_ZERO`; also set on the transient
            verdicts whose next attempt starts from zero and on a fatal one after a
            ``200`` to a resume (the file is dropped before the failure, as it always was).
        immediate: a transient verdict whose retry needs no backoff (nothing is wrong with
            the server: the next request simply asks for the whole file).
        retry_after: the raw ``Retry-After`` header of a transient status.
        start: the offset the body starts at (accepted verdicts).
        etag: the response's ETag, to keep as the resume validator (accepted verdicts).
        last_modified: its Last-Modified, likewise.
    """

    verdict: Verdict
    reason: str = ""
    code: ErrorCode = ErrorCode.DOWNLOAD_FAILED
    discard: str | None = None
    immediate: bool = False
    retry_after: str | None = None
    start: int = 0
    etag: str | None = None
    last_modified: str | None = None


def _fatal(code: ErrorCode, reason: str, discard: str | None = None) -> Judgement:
    return Judgement(Verdict.FATAL, reason, code=code, discard=discard)


def _size_mismatch(announced: str | int, size: int, discard: str | None = None) -> Judgement:
    return _fatal(
        ErrorCode.PACKAGE_SIZE_MISMATCH,
        f"server announces {announced} bytes, expected {size}",
        discard,
    )


def judge_response(
    status: int,
    headers: Mapping[str, str],
    *,
    offset: int,
    size: int,
    etag: str | None,
    last_modified: str | None,
    url: str = "",
    status_text: str = "",
) -> Judgement:
    """Judge one response to a download request.

    Args:
        status: the HTTP status.
        headers: the response headers; a case-insensitive mapping as HTTP headers are
            (aiohttp's), giving the first value of a repeated header.
        offset: where the request resumed (``Range: bytes=<offset>-``); ``0`` for a request
            without ``Range``.
        size: the package's size (``DownloadRequest.package_size``).
        etag: the ETag the download holds from its earlier responses (``None``: none).
        last_modified: the Last-Modified date it holds, likewise.
        url: the (redacted) package URL, for the details.
        status_text: the HTTP reason phrase, for the details.
    """
    if status == 416:
        if offset == 0:
            return _fatal(ErrorCode.DOWNLOAD_FAILED, f"HTTP 416 for {url} without Range")
        total = headers.get("Content-Range", "").rpartition("/")[2].strip()
        if total.isdigit() and int(total) != size:
            return _size_mismatch(total, size)
        return Judgement(
            Verdict.TRANSIENT,
            f"HTTP 416 for {url}",
            discard="server answered 416 to the resume range",
            immediate=True,
        )
    if status in (408, 429) or status >= 500:
        return Judgement(
            Verdict.TRANSIENT,
            f"HTTP {status} {status_text} for {url}",
            retry_after=headers.get("Retry-After"),
        )
    if status not in (200, 206):
        return _fatal(ErrorCode.DOWNLOAD_FAILED, f"HTTP {status} {status_text} for {url}")
    new_etag = headers.get("ETag")
    new_last_modified = headers.get("Last-Modified")
    if status == 206:
        match = _CONTENT_RANGE.match(headers.get("Content-Range", ""))
        if match is None:
            return Judgement(
                Verdict.TRANSIENT, f"HTTP 206 without a usable Content-Range from {url}"
            )
        start, end, total = int(match[1]), int(match[2]), match[3]
        if total != "*" and int(total) != size:
            return _size_mismatch(total, size)
        changed = (etag is not None and new_etag is not None and new_etag != etag) or (
            etag is None
            and last_modified is not None
            and new_last_modified is not None
            and new_last_modified != last_modified
        )
        if start != offset or end != size - 1 or changed:
            # A range of some other file or of the wrong place: never splice it.
            return Judgement(
                Verdict.TRANSIENT,
                f"unusable partial response from {url}",
                discard=f"unusable 206 (Content-Range {start}-{end}, validator changed: {changed})",
                immediate=True,
            )
        return Judgement(
            Verdict.ACCEPT, start=offset, etag=new_etag, last_modified=new_last_modified
        )
    discard = "server sent the whole file (200) to a resume" if offset else None
    length = headers.get("Content-Length")
    if length is not None:
        if not _DECIMAL.fullmatch(length.strip()):
            # aiohttp refuses such a response before it gets here (a transient ClientError).
            return Judgement(Verdict.TRANSIENT, f"invalid Content-Length {length!r} from {url}")
        if int(length) != size:
            return _size_mismatch(int(length), size, discard)
    if discard is not None:
        return Judgement(
            Verdict.RESTART_FROM_ZERO,
            discard,
            discard=discard,
            etag=new_etag,
            last_modified=new_last_modified,
        )
    return Judgement(Verdict.ACCEPT, etag=new_etag, last_modified=new_last_modified)
