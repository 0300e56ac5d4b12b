"""The download response's judgement (updater_fsm/core/download_response.py), as a table.

Each row: a response (status, headers) to a request (resumed from ``offset`` or not, with the
validators the download held) and the full :class:`Judgement`. The executor's side (the
partial file dropped, the retry, the error raised) is tested in tests/ops/test_download.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict

from updater_fsm.core.download_response import Judgement, Verdict, judge_response
from updater_fsm.core.errors import ErrorCode

SIZE = 1000
URL = "http://host/pkg.zip"
ETAG = '"v1"'
DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
LATER = "Thu, 22 Oct 2015 07:28:00 GMT"

A = Verdict.ACCEPT
R = Verdict.RESTART_FROM_ZERO
T = Verdict.TRANSIENT
F = Verdict.FATAL
RESUME_200 = "server sent the whole file (200) to a resume"
RESUME_416 = "server answered 416 to the resume range"


def unusable(start: int, end: int, changed: bool) -> str:
    return f"unusable 206 (Content-Range {start}-{end}, validator changed: {changed})"


def cr(start: int, end: int, total: int | str = SIZE) -> dict[str, str]:
    return {"Content-Range": f"bytes {start}-{end}/{total}"}


# (id, status, headers, offset, held etag, held last_modified, expected judgement)
ROWS: list[tuple[str, int, dict[str, str], int, str | None, str | None, Judgement]] = [
    # -- 200 ---------------------------------------------------------------------------
    ("200 fresh", 200, {"Content-Length": "1000", "ETag": ETAG}, 0, None, None,
     Judgement(A, etag=ETAG)),
    ("200 fresh, no Content-Length (chunked)", 200, {"Last-Modified": DATE}, 0, None, None,
     Judgement(A, last_modified=DATE)),
    ("200 fresh, both validators", 200, {"ETag": ETAG, "Last-Modified": DATE}, 0, None, None,
     Judgement(A, etag=ETAG, last_modified=DATE)),
    ("200 fresh, no validators", 200, {}, 0, ETAG, DATE, Judgement(A)),
    ("200 fresh, Content-Length with blanks", 200, {"Content-Length": " 1000 "}, 0, None, None,
     Judgement(A)),
    ("200 fresh, Content-Length too small", 200, {"Content-Length": "999"}, 0, None, None,
     Judgement(F, "server announces 999 bytes, expected 1000",
               code=ErrorCode.PACKAGE_SIZE_MISMATCH)),
    ("200 fresh, Content-Length too big", 200, {"Content-Length": "1001"}, 0, None, None,
     Judgement(F, "server announces 1001 bytes, expected 1000",
               code=ErrorCode.PACKAGE_SIZE_MISMATCH)),
    ("200 fresh, invalid Content-Length", 200, {"Content-Length": "1e3"}, 0, None, None,
     Judgement(T, f"invalid Content-Length '1e3' from {URL}")),
    ("200 fresh, negative Content-Length", 200, {"Content-Length": "-1"}, 0, None, None,
     Judgement(T, f"invalid Content-Length '-1' from {URL}")),
    ("200 to a Range request: restart from zero", 200,
     {"Content-Length": "1000", "ETag": '"v2"'}, 400, ETAG, None,
     Judgement(R, RESUME_200, discard=RESUME_200, etag='"v2"')),
    ("200 to a Range request, no length", 200, {}, 400, None, DATE,
     Judgement(R, RESUME_200, discard=RESUME_200)),
    ("200 to a Range request, wrong length: dropped, then fatal", 200,
     {"Content-Length": "5"}, 400, ETAG, None,
     Judgement(F, "server announces 5 bytes, expected 1000",
               code=ErrorCode.PACKAGE_SIZE_MISMATCH, discard=RESUME_200)),
    # -- 206 ---------------------------------------------------------------------------
    ("206 matching the resume", 206, {**cr(400, 999), "ETag": ETAG}, 400, ETAG, None,
     Judgement(A, start=400, etag=ETAG)),
    ("206 matching, total unknown", 206, {**cr(400, 999, "*"), "ETag": ETAG}, 400, ETAG, None,
     Judgement(A, start=400, etag=ETAG)),
    ("206 matching, content-range in lower case", 206,
     {"content-range": "BYTES 400-999/1000"}, 400, None, DATE,
     Judgement(A, start=400)),
    ("206 to a fresh request, the whole file", 206, cr(0, 999), 0, None, None,
     Judgement(A)),
    ("206 same Last-Modified", 206, {**cr(400, 999), "Last-Modified": DATE}, 400, None, DATE,
     Judgement(A, start=400, last_modified=DATE)),
    ("206 new ETag", 206, {**cr(400, 999), "ETag": '"v2"'}, 400, ETAG, None,
     Judgement(T, f"unusable partial response from {URL}", discard=unusable(400, 999, True),
               immediate=True)),
    ("206 new Last-Modified, no ETag held", 206, {**cr(400, 999), "Last-Modified": LATER},
     400, None, DATE,
     Judgement(T, f"unusable partial response from {URL}", discard=unusable(400, 999, True),
               immediate=True)),
    ("206 new Last-Modified, ETag held and unchanged: the ETag decides", 206,
     {**cr(400, 999), "ETag": ETAG, "Last-Modified": LATER}, 400, ETAG, DATE,
     Judgement(A, start=400, etag=ETAG, last_modified=LATER)),
    ("206 without ETag while one was held: not a change", 206, cr(400, 999), 400, ETAG, None,
     Judgement(A, start=400)),
    ("206 with the wrong start", 206, {**cr(300, 999), "ETag": ETAG}, 400, ETAG, None,
     Judgement(T, f"unusable partial response from {URL}", discard=unusable(300, 999, False),
               immediate=True)),
    ("206 ending early", 206, {**cr(400, 899), "ETag": ETAG}, 400, ETAG, None,
     Judgement(T, f"unusable partial response from {URL}", discard=unusable(400, 899, False),
               immediate=True)),
    ("206 with another total", 206, cr(400, 1999, 2000), 400, ETAG, None,
     Judgement(F, "server announces 2000 bytes, expected 1000",
               code=ErrorCode.PACKAGE_SIZE_MISMATCH)),
    ("206 without Content-Range", 206, {"ETag": ETAG}, 400, ETAG, None,
     Judgement(T, f"HTTP 206 without a usable Content-Range from {URL}")),
    ("206 with a multi-range Content-Range", 206, {"Content-Range": "bytes 400-499,600-699/1000"},
     400, ETAG, None,
     Judgement(T, f"HTTP 206 without a usable Content-Range from {URL}")),
    # -- 416 ---------------------------------------------------------------------------
    ("416 to a resume", 416, {"Content-Range": "bytes */1000"}, 400, ETAG, None,
     Judgement(T, f"HTTP 416 for {URL}", discard=RESUME_416, immediate=True)),
    ("416 to a resume, no Content-Range", 416, {}, 400, ETAG, None,
     Judgement(T, f"HTTP 416 for {URL}", discard=RESUME_416, immediate=True)),
    ("416 to a resume, another total", 416, {"Content-Range": "bytes */2000"}, 400, ETAG, None,
     Judgement(F, "server announces 2000 bytes, expected 1000",
               code=ErrorCode.PACKAGE_SIZE_MISMATCH)),
    ("416 without Range", 416, {"Content-Range": "bytes */1000"}, 0, None, None,
     Judgement(F, f"HTTP 416 for {URL} without Range", code=ErrorCode.DOWNLOAD_FAILED)),
    # -- transient statuses ------------------------------------------------------------
    ("500", 500, {}, 0, None, None, Judgement(T, f"HTTP 500 Reason for {URL}")),
    ("503 with Retry-After", 503, {"Retry-After": "7"}, 400, ETAG, None,
     Judgement(T, f"HTTP 503 Reason for {URL}", retry_after="7")),
    ("599", 599, {}, 0, None, None, Judgement(T, f"HTTP 599 Reason for {URL}")),
    ("408", 408, {}, 0, None, None, Judgement(T, f"HTTP 408 Reason for {URL}")),
    ("429 with an HTTP-date Retry-After", 429, {"Retry-After": DATE}, 0, None, None,
     Judgement(T, f"HTTP 429 Reason for {URL}", retry_after=DATE)),
    # -- fatal statuses ----------------------------------------------------------------
    ("404", 404, {}, 0, None, None,
     Judgement(F, f"HTTP 404 Reason for {URL}", code=ErrorCode.DOWNLOAD_FAILED)),
    ("403 to a resume keeps the partial file", 403, {}, 400, ETAG, None,
     Judgement(F, f"HTTP 403 Reason for {URL}", code=ErrorCode.DOWNLOAD_FAILED)),
    ("400", 400, {"Retry-After": "7"}, 0, None, None,
     Judgement(F, f"HTTP 400 Reason for {URL}", code=ErrorCode.DOWNLOAD_FAILED)),
    ("204", 204, {}, 0, None, None,
     Judgement(F, f"HTTP 204 Reason for {URL}", code=ErrorCode.DOWNLOAD_FAILED)),
    ("304", 304, {}, 400, ETAG, None,
     Judgement(F, f"HTTP 304 Reason for {URL}", code=ErrorCode.DOWNLOAD_FAILED)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "headers", "offset", "etag", "last_modified", "expected"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_judgement_table(
    status: int,
    headers: dict[str, str],
    offset: int,
    etag: str | None,
    last_modified: str | None,
    expected: Judgement,
) -> None:
    got = judge_response(
        status,
        CIMultiDict(headers),
        offset=offset,
        size=SIZE,
        etag=etag,
        last_modified=last_modified,
        url=URL,
        status_text="Reason",
    )
    assert got == expected


def test_every_verdict_is_in_the_table() -> None:
    assert {row[-1].verdict for row in ROWS} == set(Verdict)


def test_a_repeated_header_counts_with_its_first_value() -> None:
    headers: CIMultiDict[Any] = CIMultiDict([("ETag", '"a"'), ("ETag", '"b"')])
    headers.add("Content-Length", "1000")
    got = judge_response(200, headers, offset=0, size=SIZE, etag=None, last_modified=None)
    assert got == Judgement(Verdict.ACCEPT, etag='"a"')
