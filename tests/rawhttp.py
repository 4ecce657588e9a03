"""Raw HTTP/1.1 over sockets, for tests of what a well-behaved client library never does:
half-sent requests, aborted uploads, requests sent while the server is stopped."""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def connect(port: int, timeout: float = 30.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def predict_request(body: bytes, *, content_length: int | None = None, path: str = "/predict") -> bytes:
    """The bytes of a raw ``image/jpeg`` POST (its body may be cut short by the caller)."""
    length = len(body) if content_length is None else content_length
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nContent-Length: {length}\r\n\r\n"
    return head.encode() + body


def read_answer(sock: socket.socket) -> Answer | None:
    """One HTTP response from ``sock``, or None when the server closed it without one."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            body += chunk
    except (ConnectionResetError, BrokenPipeError):
        return None
    return Answer(int(lines[0].split()[1]), headers, body[:length])


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (reads end-of-file or a reset)."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def metric(url: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(match.group(3))
    return 0.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(0.05)
