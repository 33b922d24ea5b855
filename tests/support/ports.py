"""Raw-socket clients for the port tests: HTTP/1.1 by hand over TLS, so a test controls
every write (bodies in pieces, lying Content-Length, trickles, idle sockets)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

GiB = 1 << 30


def tls_ctx(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    ctx.check_hostname = False
    return ctx


def connect(port: int, ctx: ssl.SSLContext | None, timeout: float = 10.0) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(raw) if ctx is not None else raw


def head(method: str, path: str, length: int | None = None, chunked: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: node", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(s: socket.socket, timeout: float = 15.0) -> tuple[int, bytes, bool]:
    """(status, body, closed): closed is True when the server closed after answering."""
    s.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = _recv(s)
        if not chunk:
            raise ConnectionError(f"closed before an answer ({buf[:80]!r})")
        buf += chunk
    header, _, body = buf.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in header.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = _recv(s)
        if not chunk:
            break
        body += chunk
    return status, body, is_closed(s, 3.0)


def _recv(s: socket.socket) -> bytes:
    try:
        return s.recv(65536)
    except (ConnectionError, ssl.SSLError):
        return b""


def is_closed(s: socket.socket, wait: float) -> bool:
    """The peer closed (EOF or reset) within `wait` seconds."""
    s.settimeout(wait)
    try:
        while s.recv(65536):
            pass  # an answer (400, 413) before the close
        return True
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError, OSError):
        return True


def request(port: int, ctx: ssl.SSLContext | None, method: str, path: str,
            body: bytes = b"") -> tuple[int, bytes]:
    with connect(port, ctx) as s:
        s.sendall(head(method, path, len(body)) + body)
        status, data, _ = read_response(s)
        return status, data


def post_chunked_over(port: int, ctx: ssl.SSLContext | None, path: str,
                      total: int) -> tuple[int, bool]:
    """Stream `total` bytes with no Content-Length: the cap must be counted while reading."""
    with connect(port, ctx) as s:
        s.sendall(head("POST", path, chunked=True))
        sent, piece = 0, b"0" * 65536
        try:
            while sent < total:
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            s.sendall(b"0\r\n\r\n")
        except (ConnectionError, ssl.SSLError, OSError):
            pass  # the server may stop reading once it has answered
        status, _, closed = read_response(s)
        return status, closed


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def wait_closed(socks: list[socket.socket], within: float) -> int:
    """How many of `socks` the server closed within `within` seconds (all at once)."""
    deadline = time.monotonic() + within
    open_ = list(socks)
    while open_ and time.monotonic() < deadline:
        open_ = [s for s in open_ if not is_closed(s, 0.01)]
        time.sleep(0.5)
    return len(socks) - len(open_)


class Flood:
    """200 idle sockets, trickling clients (1 byte a second) and one 1 GiB-declared body
    against one port, while a normal client keeps asking; prints what held."""

    def __init__(self, port: int, pid: int, ctx: ssl.SSLContext | None,
                 start: bytes, trickle: bytes | None = None, idle: int = 200,
                 slow: int = 20) -> None:
        self.port, self.pid, self.ctx, self.start = port, pid, ctx, start
        self.trickle = trickle or start.replace(b"1073741824", b"1000")
        self.n_idle, self.n_slow = idle, slow
        self.socks: list[socket.socket] = []
        self.stop = threading.Event()

    def _trickle(self, socks: list[socket.socket]) -> None:
        """Half send their headers a byte a second, half a 1000-byte body a byte a second."""
        head, at = self.trickle, 0
        while not self.stop.wait(1.0):
            for i, s in enumerate(socks):
                try:
                    s.send(head[at:at + 1] if i % 2 else b"X")
                except (OSError, ssl.SSLError):
                    pass
            at += 1

    def _big(self, out: list[str]) -> None:
        try:
            with connect(self.port, self.ctx) as s:
                s.sendall(self.start)
                zeros = b"\0" * 65536
                for _ in range(4096):  # up to 256 MiB
                    s.sendall(zeros)
                out.append("sent 256 MiB, never cut")
        except (OSError, ssl.SSLError) as e:
            out.append(f"cut: {type(e).__name__}")

    def run(self, normal: Callable[[], bool], settle: float = 40.0) -> dict[str, float]:
        base = rss_mb(self.pid)
        big: list[str] = []
        bt = threading.Thread(target=self._big, args=(big,), daemon=True)
        bt.start()
        for _ in range(self.n_idle):
            try:
                self.socks.append(socket.create_connection(("127.0.0.1", self.port), 10))
            except OSError:
                pass  # a full backlog refuses: that is a bound too
        slow = []
        for _ in range(self.n_slow):
            try:
                s = connect(self.port, self.ctx)
                if len(slow) % 2 == 0:
                    s.sendall(self.trickle)
                slow.append(s)
            except (OSError, ssl.SSLError):
                pass
        self.socks += slow
        tt = threading.Thread(target=self._trickle, args=(slow,), daemon=True)
        tt.start()
        served = [normal() for _ in range(3)]
        peak = rss_mb(self.pid)
        bt.join(60)
        closed = wait_closed(self.socks, settle)
        self.stop.set()
        for s in self.socks:
            s.close()
        time.sleep(8)  # agent/serve.py collects refused handshakes' buffers after 5 s
        after = rss_mb(self.pid)
        print(f"port {self.port}: {len(self.socks)} attackers ({len(slow)} trickling), "
              f"1 GiB body: {big[0] if big else 'still sending'}; normal client served "
              f"{sum(served)}/3 during the flood; {closed}/{len(self.socks)} attackers cut "
              f"within {settle:.0f} s; RSS {base:.0f} -> peak {peak:.0f} -> {after:.0f} MB")
        return {"served": sum(served), "cut": closed, "attackers": len(self.socks),
                "big_cut": float(bool(big) and big[0].startswith("cut")),
                "base": base, "peak": peak, "after": after}
