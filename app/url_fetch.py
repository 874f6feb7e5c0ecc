"""Fetching a photo from a client's ``image_url`` without letting the client aim the service at its own
network.

A URL fetched on a client's behalf is a classic server-side request forgery hole: ``http://169.254.169.254/``
(cloud metadata), ``http://localhost:6379/``, a name that resolves to 10.x, or a public URL that redirects to
one. So:

- only http and https; the feature is off unless ``PETSEG_ALLOW_URLS=true``;
- the host is resolved once, and refused when ANY of its addresses is loopback, private, link-local,
  multicast, reserved, unspecified or otherwise not globally routable (hosts listed in
  ``PETSEG_URL_ALLOW_HOSTS`` skip this check only);
- the connection goes to the address that was checked, not to the name: the URL's host is replaced by the
  address, the ``Host`` header and TLS SNI/certificate check keep the name. A second DNS lookup (DNS
  rebinding: a public answer for the check, 127.0.0.1 for the connection) has nothing to act on;
- redirects are followed by hand, each hop checked the same way, at most ``MAX_REDIRECTS``;
- connect and read timeouts, an overall deadline, and the body streamed against the byte limit (a
  ``Content-Length`` over it is refused before reading; compressed bodies count decoded bytes).

Each refusal is an :class:`ApiError` with a 4xx status and a sentence saying what was refused.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
import httpx

from app.error_text import error_text
from app.errors import ApiError

__all__ = ["MAX_REDIRECTS", "Resolver", "UrlFetcher", "UrlPolicy", "refusal_reason", "system_resolver"]

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` gives for ``host`` (its order, no repeats), off the event loop."""
    infos = await anyio.to_thread.run_sync(
        lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP))
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def refusal_reason(address: IPAddress) -> str | None:
    """Why the service will not connect to ``address`` (None: a public address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refusal_reason(address.ipv4_mapped)
    # The most specific name first: Python counts loopback, link-local... ranges as private too.
    for reason, flag in (("loopback", address.is_loopback), ("link-local", address.is_link_local),
                         ("multicast", address.is_multicast), ("unspecified", address.is_unspecified),
                         ("reserved", address.is_reserved), ("private", address.is_private)):
        if flag:
            return reason
    if not address.is_global:  # shared (100.64/10), documentation, benchmarking... ranges
        return "not globally routable"
    return None


@dataclass(frozen=True)
class UrlPolicy:
    allow_hosts: frozenset[str]  # lower-case host names or addresses exempt from the address check
    max_bytes: int
    connect_timeout_s: float
    read_timeout_s: float
    total_timeout_s: float


@dataclass(frozen=True)
class _Target:
    """One hop: the URL as asked, and the checked address the connection will go to."""
    url: httpx.URL
    address: str


class UrlFetcher:
    """``await fetch(url)`` -> the body's bytes, or an :class:`ApiError` saying what was refused.

    ``resolver`` and ``transport`` are there for tests: a fake resolver decides what a name resolves to, and a
    transport can refuse anything but loopback, so no test ever reaches another address."""

    def __init__(self, policy: UrlPolicy, resolver: Resolver = system_resolver,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.policy = policy
        self.resolver = resolver
        self.transport = transport

    async def fetch(self, url: str) -> bytes:
        try:
            return await asyncio.wait_for(self._follow(url), self.policy.total_timeout_s)
        except asyncio.TimeoutError:
            limit = self.policy.total_timeout_s
            raise ApiError(400, f"image_url: the download took longer than {limit:g}s") from None

    async def _follow(self, url: str) -> bytes:
        current = _parse(url)
        timeout = httpx.Timeout(self.policy.read_timeout_s, connect=self.policy.connect_timeout_s)
        async with httpx.AsyncClient(transport=self.transport, timeout=timeout, follow_redirects=False,
                                     trust_env=False) as client:
            for hop in range(MAX_REDIRECTS + 1):
                target = await self._check(current, hop)
                location = await self._get(client, target)
                if isinstance(location, bytes):
                    return location
                current = _parse(str(current.join(location)), redirected_from=current)
        raise ApiError(400, f"image_url: more than {MAX_REDIRECTS} redirects")

    async def _check(self, url: httpx.URL, hop: int) -> _Target:
        """Resolve the host once and refuse it unless every address is public (or the host is allowed)."""
        host = url.host
        where = "image_url" if hop == 0 else f"image_url's redirect #{hop} ({_shown(url)})"
        try:
            addresses = [str(ipaddress.ip_address(host))]  # an address literal: nothing to resolve
        except ValueError:
            try:
                addresses = list(await self.resolver(host, _port(url)))
            except (OSError, UnicodeError) as exc:
                raise ApiError(400, f"{where}: the host {host!r} does not resolve ({exc})") from None
        if not addresses:
            raise ApiError(400, f"{where}: the host {host!r} has no address")
        if host.lower() not in self.policy.allow_hosts:
            for address in addresses:
                reason = refusal_reason(ipaddress.ip_address(address))
                if reason is not None:
                    raise ApiError(403, f"{where}: the host {host!r} resolves to a {reason} address "
                                        f"({address}); the service does not fetch from such addresses")
        return _Target(url, addresses[0])

    async def _get(self, client: httpx.AsyncClient, target: _Target) -> bytes | str:
        """The body, or the ``Location`` of a redirect."""
        url = target.url
        pinned = url.copy_with(host=target.address)
        headers = {"Host": url.netloc.decode("ascii"), "Accept": "image/*", "User-Agent": "petseg"}
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
        try:
            response = await client.send(request, stream=True)
        except httpx.ConnectTimeout:
            raise ApiError(400, f"image_url: no connection to {url.host!r} within "
                                f"{self.policy.connect_timeout_s:g}s") from None
        except httpx.ReadTimeout:
            raise ApiError(400, f"image_url: {url.host!r} sent nothing for {self.policy.read_timeout_s:g}s") \
                from None
        except httpx.HTTPError as exc:
            raise ApiError(400, f"image_url: cannot fetch from {url.host!r}: {error_text(exc)}") from None
        try:
            if response.status_code in REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise ApiError(400, f"image_url: {url.host!r} answered {response.status_code} without a "
                                        f"Location")
                return location
            if not 200 <= response.status_code < 300:
                raise ApiError(400, f"image_url: {url.host!r} answered HTTP {response.status_code}")
            return await self._read_body(response, url)
        finally:
            await response.aclose()

    async def _read_body(self, response: httpx.Response, url: httpx.URL) -> bytes:
        limit = self.policy.max_bytes
        too_big = ApiError(413, f"image_url: the photo is larger than the limit of {limit} bytes",
                           code="file_too_large")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise too_big
                chunks.append(chunk)
        except httpx.ReadTimeout:
            raise ApiError(400, f"image_url: {url.host!r} sent nothing for {self.policy.read_timeout_s:g}s") \
                from None
        except httpx.HTTPError as exc:
            raise ApiError(400, f"image_url: the download from {url.host!r} failed: {error_text(exc)}") from None
        return b"".join(chunks)


def _parse(text: str, redirected_from: httpx.URL | None = None) -> httpx.URL:
    """The client's URL (a bad one is a 422) or a redirect's target (the remote's fault: 400)."""
    where = "image_url" if redirected_from is None else f"image_url's redirect from {_shown(redirected_from)}"
    status = 422 if redirected_from is None else 400
    try:
        url = httpx.URL(text.strip())
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise ApiError(status, f"{where}: not a valid URL ({exc})") from None
    if url.scheme not in ("http", "https"):
        raise ApiError(status, f"{where}: only http and https URLs are fetched, not "
                               f"{url.scheme or 'a relative URL'!r}")
    if not url.host:
        raise ApiError(status, f"{where}: the URL has no host")
    return url


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _shown(url: httpx.URL) -> str:
    """The URL without its query string (which may carry tokens), for error messages."""
    return str(url.copy_with(query=None, fragment=None))
