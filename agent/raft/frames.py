"""A frame cap and a pending-connection limit for pysyncobj's Raft port.

pysyncobj reads a 4-byte length and then buffers until that many bytes have arrived, with
no cap: a stranger who sends a length of 2**31-1 followed by zeros is never cut off (an
agent went from 62 to 160 MB in the attack run of issue 18), and it accepts any number of
connections. Its connection class is replaced by `CappedConnection`, which checks each
frame's declared length as soon as its 4 bytes are in, before buffering the rest, and
drops the connection past the cap. Until a connection has delivered one frame that
proved the Raft password (pysyncobj then holds its peer's random key), the cap is small,
and at most RAFT_MAX_PENDING such connections wait, each at most RAFT_PENDING_DEADLINE
(checked at each accept and by `sweep` once a second from PrimaryStore's tick; the
oldest go first).

`install()` points pysyncobj's two constructors of connections (the server's accept and
the transport's outgoing connect) at the subclass; agent/raft/store.py calls it once. The
overridden method is pysyncobj 0.3's private `TcpConnection.__processRead`, so a
pysyncobj upgrade must keep tests/test_ports.py's Raft test passing.
"""

from __future__ import annotations

import logging
import struct
import weakref
from typing import Any

from pysyncobj import tcp_connection, tcp_server, transport
from pysyncobj.monotonic import monotonic
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

from agent.tuning import RAFT_FIRST_FRAME, RAFT_MAX_FRAME, RAFT_MAX_PENDING, RAFT_PENDING_DEADLINE

log = logging.getLogger(__name__)

# per poller (one per PrimaryStore): incoming connections not yet authenticated, oldest first
_PENDING: weakref.WeakKeyDictionary[Any, dict[CappedConnection, float]] = \
    weakref.WeakKeyDictionary()


class CappedConnection(TcpConnection):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if kwargs.get("socket") is not None:  # accepted by our server: a stranger so far
            self._admit(kwargs["poller"])

    def authenticated(self) -> bool:
        """Keys are exchanged only under a password; without one nothing can be proved."""
        return (self.encryptor is None or self.sendRandKey is not None
                or self.recvRandKey is not None)

    def _admit(self, poller: Any) -> None:
        sweep(poller, room=1)
        _PENDING.setdefault(poller, {})[self] = monotonic()

    def _TcpConnection__processRead(self) -> bool:
        """Read one chunk (pysyncobj's), then judge the frame it belongs to."""
        if not TcpConnection._TcpConnection__processRead(self):
            return False
        buf = self._TcpConnection__readBuffer
        if len(buf) < 4:
            return True
        (size,) = struct.unpack("i", buf[:4])
        cap = RAFT_MAX_FRAME if self.authenticated() else RAFT_FIRST_FRAME
        if not 0 <= size <= cap:
            log.warning("raft: dropped a connection announcing a %d-byte frame (cap %d)",
                        size, cap)
            self.disconnect()
            return False
        return len(buf) < 4 + size  # a whole frame is in: let it be parsed before more


def sweep(poller: Any, room: int = 0) -> None:
    """Forget authenticated or closed connections; drop strangers past the deadline, and
    the oldest while fewer than `room` places are free. Runs on pysyncobj's thread."""
    now = monotonic()
    waiting = _PENDING.setdefault(poller, {})
    for conn, since in list(waiting.items()):
        if conn.state == CONNECTION_STATE.DISCONNECTED or conn.authenticated():
            del waiting[conn]
        elif (now - since > RAFT_PENDING_DEADLINE
              or len(waiting) > RAFT_MAX_PENDING - room):
            del waiting[conn]
            conn.disconnect()


def install() -> None:
    """Every connection pysyncobj makes from now on is a CappedConnection."""
    assert tcp_connection.TcpConnection is TcpConnection
    tcp_server.TcpConnection = CappedConnection
    transport.TcpConnection = CappedConnection
