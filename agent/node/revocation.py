"""The node API's revocation check, as aiohttp middleware.

Python's ssl cannot consult a changing list during the handshake, so revocation (by listing
fingerprints in network.yaml) is enforced on every request right after it. The verdict is
agent.trust.pki's `check_peer`; this is the HTTP shell around it, kept out of trust/ so the
pure layer never imports aiohttp.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from agent.errors import CertificateError
from agent.trust.pki import PeerVerdicts


def revocation_middleware(get_revoked: Callable[[], set[str]], ca_pem: bytes):
    """The handshake proved the chain; this refuses revoked peers (and a request with no
    client certificate). The chain's verdict is remembered per certificate, so a request
    on a kept-alive connection costs a lookup, not a signature check."""
    verdicts = PeerVerdicts(ca_pem)

    @web.middleware
    async def middleware(request: web.Request, handler):
        sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = sslobj.getpeercert(binary_form=True) if sslobj else None
        if not der:
            return web.json_response({"error": "client certificate required"}, status=401)
        try:
            request["peer"] = verdicts.check(der, get_revoked())
        except CertificateError as e:
            return web.json_response({"error": str(e)}, status=403)
        return await handler(request)

    return middleware
