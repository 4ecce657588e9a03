"""A lean HTTP/1.1 load client: raw asyncio streams, pre-built requests, keep-alive connections.

Used where ``wrk`` is not installed. Each connection sends its next request as soon as the
previous answer arrived (a closed loop, like ``wrk``), so ``concurrency`` is the number of
requests in flight. Per request it only splits the header block and reads the body by
``Content-Length`` (or chunks), so the client costs a few per cent of one core at hundreds of
requests a second; ``bench.loadgen`` measures and reports that share.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Sample:
    """One answered request: when it was sent and completed (``perf_counter`` s), status, batch header."""

    sent: float
    done: float
    status: int
    batch_header: str | None


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http:// URL, got {url!r}")
        path = parts.path or "/"
        return cls(parts.hostname, parts.port or 80, path + (f"?{parts.query}" if parts.query else ""))


def multipart_request(target: Target, data: bytes, filename: str) -> bytes:
    """A complete POST with one multipart ``file`` field."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return _request(target, f"multipart/form-data; boundary={boundary}", body)


def raw_request(target: Target, data: bytes) -> bytes:
    """A complete POST whose body is the JPEG itself."""
    return _request(target, "image/jpeg", data)


def _request(target: Target, content_type: str, body: bytes) -> bytes:
    head = (
        f"POST {target.path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bool]:
    """Read one response; returns (status, lower-cased headers, whether the connection stays open)."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("server closed the connection")
    status = int(status_line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    keep_alive = headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        await _skip_chunks(reader)
    else:
        await reader.read()
        keep_alive = False
    return status, headers, keep_alive


async def _skip_chunks(reader: asyncio.StreamReader) -> None:
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            return
        await reader.readexactly(size + 2)


class _Connection:
    """One keep-alive connection sending requests back to back until the deadline."""

    def __init__(self, target: Target, requests: list[bytes], offset: int, timeout: float) -> None:
        self.target, self.requests, self.index, self.timeout = target, requests, offset, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def run(self, deadline: float, samples: list[Sample], errors: Counter[str]) -> None:
        try:
            while time.perf_counter() < deadline:
                await self._one(samples, errors)
        finally:
            await self._close()

    async def _one(self, samples: list[Sample], errors: Counter[str]) -> None:
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.wait_for(
                    asyncio.open_connection(self.target.host, self.target.port), self.timeout
                )
        except (OSError, TimeoutError):
            errors["connect"] += 1
            await asyncio.sleep(0.05)
            return
        assert self.reader is not None
        payload = self.requests[self.index % len(self.requests)]
        self.index += 1
        sent = time.perf_counter()
        try:
            self.writer.write(payload)
            status, headers, keep_alive = await asyncio.wait_for(read_response(self.reader), self.timeout)
        except TimeoutError:
            errors["timeout"] += 1
            await self._close()
            return
        except (OSError, EOFError, ValueError, IndexError, asyncio.IncompleteReadError):
            errors["read"] += 1
            await self._close()
            return
        samples.append(Sample(sent, time.perf_counter(), status, headers.get("x-batch-size")))
        if not keep_alive:
            await self._close()

    async def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def drive(
    target: Target, requests: list[bytes], concurrency: int, seconds: float, timeout: float
) -> tuple[list[Sample], Counter[str]]:
    """``concurrency`` connections in a closed loop for ``seconds``; in-flight requests then finish."""
    samples: list[Sample] = []
    errors: Counter[str] = Counter()
    deadline = time.perf_counter() + seconds
    connections = [_Connection(target, requests, k * 7, timeout) for k in range(concurrency)]
    await asyncio.gather(*(connection.run(deadline, samples, errors) for connection in connections))
    return samples, errors
