"""Reading a processor's answer with a cap on its size, counted after decompression and enforced
while it streams in: a few hundred KB of gzip can expand to gigabytes.

httpx's own decoders inflate each network chunk whole (64 KB of gzip'd zeros is 64 MB), so the
answer is read raw and inflated here, never more than the cap allows at a time.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import httpx

from adapters.base import ProcessorProtocolError

# Only what _Inflater decodes with a bounded output; httpx would otherwise offer br and zstd when
# their packages happen to be installed.
ACCEPT_ENCODING = "gzip, deflate"
TOO_LARGE = "too_large"  # the ProcessorProtocolError code for an answer over the cap
_WBITS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}


@dataclass(frozen=True, slots=True)
class Answer:
    """A processor's whole answer, its body decoded and no larger than the cap."""

    status_code: int
    headers: httpx.Headers
    content: bytes


class _Inflater:
    """gzip or deflate, inflated at most `room` bytes per call; deflate may come with or without
    its zlib header (servers disagree), as httpx's DeflateDecoder allows."""

    def __init__(self, coding: str):
        self._coding = coding
        self._z = zlib.decompressobj(_WBITS[coding])
        self._first = True

    @property
    def eof(self) -> bool:
        return self._z.eof

    def inflate(self, data: bytes, room: int) -> tuple[bytes, bytes]:
        """(what `data` inflates to, up to `room` bytes; the input left over for the next call)."""
        first, self._first = self._first, False
        try:
            out = self._z.decompress(data, room)
        except zlib.error:
            if not (first and self._coding == "deflate"):
                raise
            self._z = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._z.decompress(data, room)
        # At the end of the stream, what follows it in `data`: the caller counts and drops it.
        return out, self._z.unused_data if self._z.eof else self._z.unconsumed_tail


def _inflater(headers: httpx.Headers, processor: str) -> _Inflater | None:
    codings = [c.strip().lower() for c in headers.get_list("content-encoding", split_commas=True)]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in _WBITS:
        # Never asked for (ACCEPT_ENCODING), and a layered encoding is a bomb inside a bomb.
        raise ProcessorProtocolError(f"{processor} answer has a Content-Encoding we did not ask for: "
                                     f"{', '.join(codings)[:100]}", code="unparseable")
    return _Inflater(codings[0])


def _too_large(processor: str, max_bytes: int) -> ProcessorProtocolError:
    return ProcessorProtocolError(f"{processor} answer is larger than {max_bytes} bytes", code=TOO_LARGE)


async def _read_capped(response: httpx.Response, max_bytes: int, processor: str) -> bytes:
    if response.is_stream_consumed:  # an in-process transport (tests) handed over a body it had read
        if len(response.content) > max_bytes:
            raise _too_large(processor, max_bytes)
        return response.content
    inflater = _inflater(response.headers, processor)
    chunks: list[bytes] = []
    size = 0
    async for raw in response.aiter_raw():
        while raw:
            if inflater is None:
                piece, raw = raw, b""
            elif inflater.eof:
                # Bytes after the end of the compressed stream: dropped (as httpx drops them), but
                # counted, so that they cannot go on without end.
                size, piece, raw = size + len(raw), b"", b""
            else:
                try:
                    # One byte more than the cap leaves room for: it tells "over" from "exactly at".
                    piece, raw = inflater.inflate(raw, max_bytes - size + 1)
                except zlib.error as e:
                    raise ProcessorProtocolError(f"{processor} answer cannot be decoded: {e}",
                                                 code="unparseable") from None
            size += len(piece)
            if size > max_bytes:
                raise _too_large(processor, max_bytes)
            if piece:
                chunks.append(piece)
    return b"".join(chunks)


async def read_answer(client: httpx.AsyncClient, method: str, url: str, *, max_bytes: int, processor: str,
                      headers: dict[str, str] | None = None, **kwargs) -> Answer:
    """Send a request and read its answer, at most `max_bytes` of it once decoded: over that, a
    ProcessorProtocolError (code TOO_LARGE), with the connection closed rather than read to its end.
    httpx's exceptions pass through for the adapter to map; the caller's deadline covers the read."""
    request = client.build_request(method, url, headers={"Accept-Encoding": ACCEPT_ENCODING, **(headers or {})},
                                   **kwargs)
    try:
        response = await client.send(request, stream=True)
        try:
            content = await _read_capped(response, max_bytes, processor)
        finally:
            await response.aclose()
    except httpx.DecodingError as e:  # decoded by an in-process transport (tests), not here
        raise ProcessorProtocolError(f"{processor} answer cannot be decoded: {e}", code="unparseable") from None
    return Answer(response.status_code, response.headers, content)
