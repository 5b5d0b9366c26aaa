"""Which addresses a webhook may be sent to. By default only public ones: a job's webhook URL
is chosen by whoever holds an API key, and the API process that POSTs it usually sits inside
the cluster, so without this check a job could make it call Redis' neighbours, the cloud
metadata service (169.254.169.254) or an admin port on localhost (server-side request
forgery). GENQ_WEBHOOK_ALLOW_PRIVATE=true lifts it, for receivers inside a trusted network.

Checked twice: at submission, for URLs whose host is an address or `localhost` (a clear 422
naming `webhook.url`); and at every delivery, on the addresses the host name resolves to
then. The delivery connects to the address it checked (the URL's host goes in the Host
header and the TLS server name), so a name that resolves to a public address for the check
and a private one for the connection (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from common.errors import InvalidRequest

ALLOW_SETTING = "GENQ_WEBHOOK_ALLOW_PRIVATE"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedAddress(Exception):
    """The webhook's host is (or resolves to) an address that is not public."""


def is_public(addr: Address) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_submitted(url: str, allow_private: bool) -> None:
    """Refuse, at submission, a URL whose host is plainly not public."""
    if allow_private:
        return
    host = (urlsplit(url).hostname or "").lower()
    addr = _literal(host)
    if host == "localhost" or host.endswith(".localhost") or (addr and not is_public(addr)):
        raise InvalidRequest(
            f"webhook url host '{host}' is not a public address; set {ALLOW_SETTING}=true to "
            "send webhooks inside a trusted network",
            param="webhook.url",
        )


@dataclass(frozen=True, slots=True)
class Target:
    """Where one delivery connects: `url` (its host replaced by the checked address when the
    policy applies) and the headers/extensions that keep the original name on the wire."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, str]


async def resolve(url: str, allow_private: bool) -> Target:
    """The delivery target for `url`: its host resolved now and every address checked."""
    if allow_private:
        return Target(url, {}, {})
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addr = _literal(host)
    if addr is None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise BlockedAddress(f"cannot resolve host ({exc.strerror or exc})") from exc
        addrs = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not addrs or not all(is_public(a) for a in addrs):
            raise BlockedAddress("host resolves to a non-public address")
        addr = addrs[0]
    elif not is_public(addr):
        raise BlockedAddress("host is a non-public address")
    netloc = f"[{addr}]" if addr.version == 6 else str(addr)
    if parts.port:
        netloc += f":{parts.port}"
    name = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    host_header = name if not parts.port else f"{name}:{parts.port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return Target(pinned, {"host": host_header}, extensions)
