"""Every TLS context mycelium builds, in one place, so their differences are visible side
by side rather than spread over the modules that open sockets.

The network's own links (node API, gossip, operator CLI) are mutual TLS 1.3 pinned to the
network CA alone: no system store, and no host-name check, because nodes are addressed by
IP:port and the CA is what we trust. Enrolment is the one server that asks no client
certificate (the joiner has none yet; its token decides), and its client first fetches
the CA unverified, then pins it once its hash matched the root. The seed spore may sit on
an ordinary web server, so its client checks host names against the system store plus the
network CA. Revocation cannot be expressed to OpenSSL, so `check_after_handshake` runs a
Python check inside the handshake.

This module sits below node/: it takes paths and bytes, never a NodeDir.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from agent.errors import ConfigError, MyceliumError

PathLike = Path | str


def server_context(cert: PathLike, key: PathLike, ca: PathLike | None,
                   tls13: bool = True) -> ssl.SSLContext:
    """A server presenting `cert`. With `ca`: a client certificate from that CA is
    required, or no connection at all (mutual TLS). Without: no client certificate is
    asked (enrolment)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if tls13:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    load_chain(ctx, cert, key)
    if ca is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        load_ca(ctx, ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def load_chain(ctx: ssl.SSLContext, cert: PathLike, key: PathLike) -> None:
    """Our certificate and key, or one ConfigError naming both files (a torn or corrupt
    PEM file is an `ssl.SSLError: PEM lib` traceback otherwise)."""
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"certificate {cert} or its key {key} is unreadable or corrupt "
                          f"({_why(e)}); restore them or enrol the node again") from e


def load_ca(ctx: ssl.SSLContext, ca: PathLike) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"CA certificate {ca} is unreadable or corrupt ({_why(e)}); "
                          "restore it or enrol the node again") from e


def _why(e: Exception) -> str:
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)


def client_context(cert: PathLike, key: PathLike, ca: PathLike) -> ssl.SSLContext:
    """Mutual TLS 1.3 to a peer of this network: our certificate, only this network's CA
    trusted (no system store), no host-name check (peers are IP:port; the CA is pinned)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    load_ca(ctx, ca)
    load_chain(ctx, cert, key)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def probe_context() -> ssl.SSLContext:
    """Unverified: only to fetch a CA certificate that the caller then checks by hash."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def pinned_context(ca_pem: bytes) -> ssl.SSLContext:
    """Trust exactly the CA in `ca_pem` (no system store); peers are addresses, so no
    host-name check."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.check_hostname = False
    return ctx


def web_client_context(cert: PathLike, key: PathLike, ca: PathLike) -> ssl.SSLContext:
    """For an https URL outside the network (the seed spore): our certificate as the
    network's credential; the server checked, with its host name, against the system store
    and the network CA (`seed serve --tls` may use a certificate from it)."""
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def check_after_handshake(ctx: ssl.SSLContext,
                          check: Callable[[bytes], None]) -> ssl.SSLContext:
    """Run `check(peer DER)` inside the handshake, on both client and server sides.

    The CA chain is verified by OpenSSL; revocation (fingerprints listed in network.yaml,
    which change at run time) cannot be, so a failing check aborts the handshake here.
    """

    class CheckingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            der = self.getpeercert(binary_form=True)
            if der is None:
                raise ssl.SSLError("peer presented no certificate")
            try:
                check(der)
            except MyceliumError as e:
                raise ssl.SSLError(f"peer refused: {e}") from e

    ctx.sslobject_class = CheckingSSLObject
    return ctx
