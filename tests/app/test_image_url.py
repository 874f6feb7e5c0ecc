"""``image_url``: fetching the photo from a URL without letting a client aim the service at private networks.

Every connection in this file goes to a server the test starts on 127.0.0.1, through a transport that refuses
anything but loopback; names are resolved by fake resolvers, and refusals of private or public addresses are
checked with a recording transport that must see no request at all (refused BEFORE any connection).
"""
from __future__ import annotations

import asyncio
import gzip
import ipaddress
import socket
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import load_settings
from app.errors import ApiError
from app.url_fetch import UrlFetcher, UrlPolicy, refusal_reason, system_resolver
from tests.app.helpers import app_client, image_files, mask_array
from tests.factories import blob_image, jpeg_bytes
from tests.server import free_port

PHOTO = jpeg_bytes(blob_image(80, 60, seed=4)[0])
LIMIT = 300_000  # PETSEG_MAX_UPLOAD_BYTES in these tests


# --- a photo server on loopback -----------------------------------------------------------------------------

class PhotoServer:
    """Serves the photo, redirect chains and misbehaving answers on 127.0.0.1; records each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        self.release = threading.Event()  # a slow answer waits for it: until the test ends, not for a time
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                server.requests.append((self.path, self.headers.get("Host", "")))
                parts = urlsplit(self.path)
                name = parts.path.strip("/").split("/")[0]
                route = getattr(server, "route_" + name.replace("-", "_").replace(".", "_"), None)
                if route is None:
                    self.send_error(404)
                    return
                try:
                    route(self, parts)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the service stopped reading: what the limit tests want

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", **headers: str) -> None:
        handler.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.end_headers()
        handler.wfile.write(body)

    def route_cat_jpg(self, handler: BaseHTTPRequestHandler, parts) -> None:  # noqa: ANN001
        self._send(handler, 200, PHOTO, Content_Type="image/jpeg")

    def route_hops(self, handler: BaseHTTPRequestHandler, parts) -> None:  # noqa: ANN001
        """/hops/K: K redirects (relative Locations), then the photo."""
        left = int(parts.path.rsplit("/", 1)[1])
        self._send(handler, 302, Location=f"/hops/{left - 1}" if left > 1 else "/cat.jpg")

    def route_to(self, handler: BaseHTTPRequestHandler, parts) -> None:  # noqa: ANN001
        """/to?url=X: one redirect to X."""
        self._send(handler, 302, Location=parse_qs(parts.query)["url"][0])

    def route_no_location(self, handler: BaseHTTPRequestHandler, parts) -> None:  # noqa: ANN001
        self._send(handler, 302)

    def route_missing(self, handler: BaseHTTPRequestHandler, parts) -> None:  # noqa: ANN001
        self._send(handler, 404, b"not here")

    def route_big(self, handler: BaseHTTPRequestHandler, parts) -> None:  # noqa: ANN001
        """Chunked, no Content-Length: more than the limit, in 64 KB chunks."""
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = b"\xff" * 65536
        for _ in range(LIMIT // len(chunk) + 2):
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        handler.wfile.write(b"0\r\n\r\n")

    def route_big_declared(self, handler: BaseHTTPRequestHandler, parts) -> None:  # noqa: ANN001
        handler.send_response(200)
        handler.send_header("Content-Length", str(LIMIT + 1))
        handler.end_headers()
        handler.wfile.write(b"\xff" * 1024)  # never the whole body: the service must not wait for it

    def route_gzip_bomb(self, handler: BaseHTTPRequestHandler, parts) -> None:  # noqa: ANN001
        """A few KB on the wire that inflate to 4x the limit (Content-Encoding: gzip)."""
        self._send(handler, 200, gzip.compress(b"\0" * (4 * LIMIT)), Content_Type="image/jpeg",
                   Content_Encoding="gzip")

    def route_slow(self, handler: BaseHTTPRequestHandler, parts) -> None:  # noqa: ANN001
        self.release.wait(60)  # answers only once the test is over: the service's read timeout must end it
        self._send(handler, 200, PHOTO, Content_Type="image/jpeg")


@pytest.fixture(scope="module")
def photos() -> Iterator[PhotoServer]:
    server = PhotoServer()
    yield server
    server.close()


# --- transports and resolvers that keep every test on loopback ----------------------------------------------

class LoopbackOnly(httpx.AsyncBaseTransport):
    """Real HTTP, but only to loopback addresses: anything else fails the test, never leaves the machine."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.hosts: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        assert ipaddress.ip_address(request.url.host).is_loopback, f"tried to connect to {request.url.host}"
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        """The fetcher closes its client after each fetch; this transport lives for the whole test."""


class Recording(httpx.MockTransport):
    """No network at all: records each request and answers it with the photo."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        super().__init__(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, content=PHOTO, headers={"Content-Type": "image/jpeg"})


def fake_resolver(table: dict[str, Sequence[str]], calls: list[str] | None = None):  # noqa: ANN201
    async def resolve(host: str, port: int) -> Sequence[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]
    return resolve


def policy(**overrides: object) -> UrlPolicy:
    values: dict = {"allow_hosts": frozenset(), "max_bytes": LIMIT, "connect_timeout_s": 2.0,
                    "read_timeout_s": 0.5, "total_timeout_s": 20.0}
    values.update(overrides)
    return UrlPolicy(**values)


def fetch(fetcher: UrlFetcher, url: str) -> bytes:
    return asyncio.run(fetcher.fetch(url))


def refused(fetcher: UrlFetcher, url: str, status: int, *words: str) -> str:
    with pytest.raises(ApiError) as error:
        fetch(fetcher, url)
    assert error.value.status_code == status, error.value.detail
    for word in words:
        assert word in error.value.detail, error.value.detail
    return error.value.detail


# --- the address rule ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("127.8.8.8", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"), ("0.0.0.0", "unspecified"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"),
    ("100.64.0.1", "not globally routable"),
    ("93.184.216.34", None), ("2606:4700::1111", None),
])
def test_refusal_reason(address: str, reason: str | None) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


# --- refusals before any connection (fake resolver, recording transport) ------------------------------------

@pytest.mark.parametrize(("answers", "reason"), [
    (["10.1.2.3"], "private"), (["169.254.169.254"], "link-local"), (["127.0.0.1"], "loopback"),
    (["::1"], "loopback"), (["224.0.0.251"], "multicast"), (["240.1.2.3"], "reserved"),
    (["93.184.216.34", "10.0.0.1"], "private"),  # ANY address refused refuses the host
])
def test_a_host_resolving_to_a_non_public_address_is_refused_before_connecting(answers: list[str],
                                                                              reason: str) -> None:
    transport = Recording()
    fetcher = UrlFetcher(policy(), resolver=fake_resolver({"photos.example": answers}), transport=transport)
    refused(fetcher, "http://photos.example/cat.jpg", 403, "photos.example", reason)
    assert transport.requests == []


@pytest.mark.parametrize("url", ["http://10.0.0.1/cat.jpg", "http://[::1]:8080/cat.jpg",
                                 "https://169.254.169.254/latest/meta-data/", "http://[::ffff:7f00:1]/x"])
def test_an_address_literal_is_checked_without_resolving(url: str) -> None:
    transport, calls = Recording(), []
    fetcher = UrlFetcher(policy(), resolver=fake_resolver({}, calls), transport=transport)
    refused(fetcher, url, 403, "address")
    assert transport.requests == [] and calls == []


@pytest.mark.parametrize(("url", "status", "words"), [
    ("ftp://photos.example/cat.jpg", 422, ["only http and https", "ftp"]),
    ("file:///etc/passwd", 422, ["only http and https"]),
    ("/cat.jpg", 422, ["only http and https"]),
    ("http:///cat.jpg", 422, ["no host"]),
    ("http://nowhere.example/cat.jpg", 400, ["does not resolve"]),
])
def test_bad_urls_are_refused_before_connecting(url: str, status: int, words: list[str]) -> None:
    transport = Recording()
    fetcher = UrlFetcher(policy(), resolver=fake_resolver({}), transport=transport)
    refused(fetcher, url, status, *words)
    assert transport.requests == []


def test_the_connection_goes_to_the_checked_address_with_the_name_in_host_and_sni() -> None:
    transport = Recording()
    fetcher = UrlFetcher(policy(), resolver=fake_resolver({"photos.example": ["93.184.216.34"]}),
                         transport=transport)
    assert fetch(fetcher, "https://photos.example:8443/a/cat.jpg?size=big") == PHOTO
    (request,) = transport.requests
    assert str(request.url) == "https://93.184.216.34:8443/a/cat.jpg?size=big"
    assert request.headers["host"] == "photos.example:8443"
    assert request.extensions["sni_hostname"] == "photos.example"  # TLS checks the name, not the IP


def test_dns_is_asked_once_so_a_rebinding_answer_is_never_used() -> None:
    """A rebinding name answers a public address to the check and 127.0.0.1 afterwards."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"], ["127.0.0.1"]])
    calls: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    transport = Recording()
    fetch(UrlFetcher(policy(), resolver=rebinding, transport=transport), "http://rebind.example/cat.jpg")
    assert calls == ["rebind.example"]
    assert [request.url.host for request in transport.requests] == ["93.184.216.34"]


def test_allowed_hosts_skip_the_address_check_only() -> None:
    transport = Recording()
    fetcher = UrlFetcher(policy(allow_hosts=frozenset({"intranet.example"})),
                         resolver=fake_resolver({"intranet.example": ["10.0.0.8"]}), transport=transport)
    assert fetch(fetcher, "http://INTRANET.example/cat.jpg") == PHOTO
    assert transport.requests[0].url.host == "10.0.0.8"
    refused(fetcher, "ftp://intranet.example/cat.jpg", 422, "only http and https")


# --- against the loopback photo server ----------------------------------------------------------------------

@pytest.fixture
def loopback() -> Iterator[LoopbackOnly]:
    transport = LoopbackOnly()
    yield transport
    asyncio.run(transport.inner.aclose())


def loopback_fetcher(transport: LoopbackOnly, resolver_table: dict[str, Sequence[str]] | None = None,
                     **overrides: object) -> UrlFetcher:
    return UrlFetcher(policy(allow_hosts=frozenset({"127.0.0.1"}), **overrides),
                      resolver=fake_resolver(resolver_table or {}), transport=transport)


def test_fetches_the_photo_from_an_allowed_loopback_host(photos: PhotoServer, loopback: LoopbackOnly) -> None:
    assert fetch(loopback_fetcher(loopback), photos.base + "/cat.jpg") == PHOTO
    assert photos.requests[-1] == ("/cat.jpg", photos.base.removeprefix("http://"))


def test_loopback_not_in_the_allow_list_is_refused_before_connecting(photos: PhotoServer,
                                                                      loopback: LoopbackOnly) -> None:
    seen = len(photos.requests)
    fetcher = UrlFetcher(policy(), transport=loopback)  # the real resolver: localhost is in /etc/hosts
    refused(fetcher, photos.base.replace("127.0.0.1", "localhost") + "/cat.jpg", 403, "loopback")
    refused(fetcher, photos.base + "/cat.jpg", 403, "loopback")
    assert len(photos.requests) == seen and loopback.hosts == []


def test_up_to_three_redirects_are_followed(photos: PhotoServer, loopback: LoopbackOnly) -> None:
    assert fetch(loopback_fetcher(loopback), photos.base + "/hops/3") == PHOTO
    assert [path for path, _ in photos.requests[-4:]] == ["/hops/3", "/hops/2", "/hops/1", "/cat.jpg"]


def test_a_fourth_redirect_is_refused(photos: PhotoServer, loopback: LoopbackOnly) -> None:
    seen = len(photos.requests)
    refused(loopback_fetcher(loopback), photos.base + "/hops/4", 400, "more than 3 redirects")
    assert [path for path, _ in photos.requests[seen:]] == ["/hops/4", "/hops/3", "/hops/2", "/hops/1"]


@pytest.mark.parametrize(("target", "status", "words"), [
    ("http://10.9.9.9/cat.jpg", 403, ["redirect #1", "private"]),
    ("http://internal.example/cat.jpg", 403, ["redirect #1", "internal.example", "private"]),
    ("http://localhost/cat.jpg", 403, ["redirect #1", "loopback"]),
    ("file:///etc/passwd", 400, ["redirect", "only http and https"]),
])
def test_each_redirect_is_checked_like_the_first_url(photos: PhotoServer, loopback: LoopbackOnly, target: str,
                                                     status: int, words: list[str]) -> None:
    fetcher = loopback_fetcher(loopback, {"internal.example": ["10.0.0.7"], "localhost": ["127.0.0.1"]})
    refused(fetcher, f"{photos.base}/to?url={target}", status, *words)
    assert all(ipaddress.ip_address(host).is_loopback for host in loopback.hosts)
    assert len(loopback.hosts) == 1  # the redirecting server only


@pytest.mark.parametrize(("path", "status", "words"), [
    ("/big", 413, ["larger than the limit", str(LIMIT)]),
    ("/big-declared", 413, ["larger than the limit"]),
    ("/gzip-bomb", 413, ["larger than the limit"]),  # counted as decoded, not as sent: 4x the limit, not 1 KB
    ("/missing", 400, ["answered HTTP 404"]),
    ("/no-location", 400, ["without a Location"]),
    ("/slow", 400, ["sent nothing for 0.5s"]),
])
def test_misbehaving_answers_are_clear_errors(photos: PhotoServer, loopback: LoopbackOnly, path: str,
                                              status: int, words: list[str]) -> None:
    refused(loopback_fetcher(loopback), photos.base + path, status, *words)


def test_a_closed_port_is_a_clear_error(loopback: LoopbackOnly) -> None:
    refused(loopback_fetcher(loopback), f"http://127.0.0.1:{free_port()}/cat.jpg", 400, "cannot fetch")


def test_the_overall_deadline_applies(photos: PhotoServer, loopback: LoopbackOnly) -> None:
    refused(loopback_fetcher(loopback, read_timeout_s=5.0, total_timeout_s=0.5), photos.base + "/slow", 400,
            "took longer than 0.5s")


# --- through /segment ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def url_api(tiny_checkpoint: Path) -> Iterator[TestClient]:
    with app_client(tiny_checkpoint, allow_urls=True, url_allow_hosts=["127.0.0.1"], max_upload_bytes=LIMIT,
                    url_read_timeout_s=0.5) as client:
        yield client


@pytest.fixture
def guarded(url_api: TestClient, loopback: LoopbackOnly) -> Iterator[TestClient]:
    """The app's fetcher with the loopback-only transport and a resolver that knows one private name."""
    fetcher = url_api.app.state.url_fetcher
    original = fetcher.transport, fetcher.resolver
    fetcher.transport, fetcher.resolver = loopback, fake_resolver({"internal.example": ["10.0.0.7"]})
    yield url_api
    fetcher.transport, fetcher.resolver = original


def test_segment_from_a_url_answers_as_for_the_upload(guarded: TestClient, photos: PhotoServer) -> None:
    by_url = guarded.post("/segment", data={"image_url": photos.base + "/cat.jpg"})
    assert by_url.status_code == 200, by_url.text
    uploaded = guarded.post("/segment", files=image_files(PHOTO))
    assert (by_url.json()["width"], by_url.json()["height"]) == (80, 60)
    assert (mask_array(by_url.json()) == mask_array(uploaded.json())).all()


@pytest.mark.parametrize(("form", "status", "words"), [
    ({"image_url": "http://internal.example/cat.jpg"}, 403, ["private"]),
    ({"image_url": "gopher://127.0.0.1/"}, 422, ["only http and https"]),
    ({"threshold": "0.5"}, 422, ["image_url"]),
])
def test_segment_refusals_are_json_4xx(guarded: TestClient, form: dict, status: int,
                                       words: list[str]) -> None:
    response = guarded.post("/segment", data=form)
    assert response.status_code == status, response.text
    for word in words:
        assert word in str(response.json()["detail"])  # a message, or FastAPI's list of field errors
    assert guarded.app.state.url_fetcher.transport.hosts == []


def test_segment_refuses_image_and_image_url_together(guarded: TestClient, photos: PhotoServer) -> None:
    response = guarded.post("/segment", files=image_files(PHOTO),
                            data={"image_url": photos.base + "/cat.jpg"})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "image_url"] and "not both" in error["msg"]


def test_segment_too_big_url_is_413(guarded: TestClient, photos: PhotoServer) -> None:
    response = guarded.post("/segment", data={"image_url": photos.base + "/big"})
    assert response.status_code == 413 and "larger than the limit" in response.json()["detail"]


def test_image_url_is_off_by_default(client: TestClient, photos: PhotoServer) -> None:
    seen = len(photos.requests)
    response = client.post("/segment", data={"image_url": photos.base + "/cat.jpg"})
    assert response.status_code == 403
    assert "PETSEG_ALLOW_URLS" in response.json()["detail"]
    assert len(photos.requests) == seen


def test_url_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSEG_ALLOW_URLS", "true")
    monkeypatch.setenv("PETSEG_URL_ALLOW_HOSTS", '["Photos.Internal", "[::1]"]')
    monkeypatch.setenv("PETSEG_URL_READ_TIMEOUT_S", "3")
    settings = load_settings(_env_file=None)
    assert settings.allow_urls is True
    assert settings.url_allow_hosts == ["photos.internal", "::1"]
    assert settings.url_read_timeout_s == 3.0 and settings.url_connect_timeout_s == 5.0


def test_url_allow_hosts_must_be_bare_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import SettingsError

    monkeypatch.setenv("PETSEG_URL_ALLOW_HOSTS", '["http://photos.internal/"]')
    with pytest.raises(SettingsError, match="PETSEG_URL_ALLOW_HOSTS"):
        load_settings(_env_file=None)


# --- each refusal's status, code and wording (found loose by mutation testing) ------------------------------

class Failing(httpx.MockTransport):
    """No network: every request raises ``error``, as a transport does when a connection fails."""

    def __init__(self, error: Exception) -> None:
        def fail(request: httpx.Request) -> httpx.Response:
            raise error
        super().__init__(fail)


class Streamed(httpx.AsyncByteStream):
    """A body in ``chunks`` without a Content-Length; ``then``, if given, is raised after the last one."""

    def __init__(self, chunks: list[bytes], then: Exception | None = None) -> None:
        self.chunks, self.then = chunks, then

    async def __aiter__(self):  # noqa: ANN204
        for chunk in self.chunks:
            yield chunk
        if self.then is not None:
            raise self.then


def answering(response: httpx.Response) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: response)


def public_fetcher(transport: httpx.AsyncBaseTransport, **overrides: object) -> UrlFetcher:
    return UrlFetcher(policy(**overrides), resolver=fake_resolver({"photos.example": ["93.184.216.34"]}),
                      transport=transport)


def refusal(fetcher: UrlFetcher, url: str) -> ApiError:
    with pytest.raises(ApiError) as error:
        fetch(fetcher, url)
    return error.value


def test_the_request_asks_for_an_image_as_petseg_under_the_policys_timeouts() -> None:
    transport = Recording()
    fetch(public_fetcher(transport, connect_timeout_s=1.5, read_timeout_s=0.25), "http://photos.example/cat.jpg")
    (request,) = transport.requests
    assert request.method == "GET"
    assert request.headers["accept"] == "image/*" and request.headers["user-agent"] == "petseg"
    assert request.extensions["timeout"] == {"connect": 1.5, "read": 0.25, "write": 0.25, "pool": 0.25}
    assert "sni_hostname" not in request.extensions  # plain http: no TLS name to check


@pytest.mark.parametrize(("url", "port"), [("http://photos.example/a.jpg", 80),
                                           ("https://photos.example/a.jpg", 443),
                                           ("http://photos.example:8080/a.jpg", 8080)])
def test_the_resolver_is_asked_for_the_urls_port(url: str, port: int) -> None:
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, wanted: int) -> list[str]:
        asked.append((host, wanted))
        return ["93.184.216.34"]

    fetch(UrlFetcher(policy(), resolver=resolve, transport=Recording()), url)
    assert asked == [("photos.example", port)]


def test_the_system_resolver_answers_for_the_host_it_is_given() -> None:
    assert asyncio.run(system_resolver("127.0.0.2", 80)) == ["127.0.0.2"]  # a literal: no lookup leaves


def test_a_host_with_no_address_is_a_400_naming_it() -> None:
    fetcher = UrlFetcher(policy(), resolver=fake_resolver({"empty.example": []}), transport=Recording())
    error = refusal(fetcher, "http://empty.example/cat.jpg")
    assert (error.status_code, error.detail) == (400, "image_url: the host 'empty.example' has no address")


@pytest.mark.parametrize(("error", "detail"), [
    (httpx.ConnectTimeout("timed out"), "image_url: no connection to 'photos.example' within 2s"),
    (httpx.ReadTimeout("timed out"), "image_url: 'photos.example' sent nothing for 0.5s"),
    (httpx.ConnectError("refused"), "image_url: cannot fetch from 'photos.example': refused"),
    (httpx.ConnectError(""), "image_url: cannot fetch from 'photos.example': ConnectError"),
])
def test_connection_failures_are_400s_that_say_what_failed(error: Exception, detail: str) -> None:
    refused_with = refusal(public_fetcher(Failing(error)), "http://photos.example/cat.jpg")
    assert (refused_with.status_code, refused_with.detail) == (400, detail)


@pytest.mark.parametrize(("then", "detail"), [
    (httpx.ReadTimeout("timed out"), "image_url: 'photos.example' sent nothing for 0.5s"),
    (httpx.RemoteProtocolError("closed"), "image_url: the download from 'photos.example' failed: closed"),
    (httpx.ReadError(""), "image_url: the download from 'photos.example' failed: ReadError"),
])
def test_a_body_cut_off_midway_is_a_400_that_says_how(then: Exception, detail: str) -> None:
    response = httpx.Response(200, stream=Streamed([b"\xff\xd8", b"\xff"], then=then))
    error = refusal(public_fetcher(answering(response)), "http://photos.example/cat.jpg")
    assert (error.status_code, error.detail) == (400, detail)


def test_a_body_in_chunks_arrives_whole() -> None:
    response = httpx.Response(200, stream=Streamed([PHOTO[:100], PHOTO[100:]]))
    assert fetch(public_fetcher(answering(response)), "http://photos.example/cat.jpg") == PHOTO


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_body_of_exactly_the_limit_is_fetched_and_one_byte_more_is_refused(declared: bool) -> None:
    def answer(size: int) -> httpx.Response:
        body = b"\xff" * size
        return httpx.Response(200, content=body) if declared else httpx.Response(200, stream=Streamed([body]))

    assert len(fetch(public_fetcher(answering(answer(LIMIT))), "http://photos.example/a.jpg")) == LIMIT
    error = refusal(public_fetcher(answering(answer(LIMIT + 1))), "http://photos.example/a.jpg")
    assert (error.status_code, error.code) == (413, "file_too_large")


def test_a_300_without_location_is_not_a_photo() -> None:
    error = refusal(public_fetcher(answering(httpx.Response(300, content=PHOTO))), "http://photos.example/a.jpg")
    assert (error.status_code, error.detail) == (400, "image_url: 'photos.example' answered HTTP 300")


@pytest.mark.parametrize(("url", "detail"), [
    ("http://[::1/x", "image_url: not a valid URL (Invalid port: ':1')"),
    ("/cat.jpg", "image_url: only http and https URLs are fetched, not 'a relative URL'"),
    ("http://nowhere.example/cat.jpg",
     "image_url: the host 'nowhere.example' does not resolve ([Errno -2] Name or service not known)"),
])
def test_a_bad_first_url_is_named_as_image_url(url: str, detail: str) -> None:
    error = refusal(UrlFetcher(policy(), resolver=fake_resolver({}), transport=Recording()), url)
    assert (error.status_code, error.detail) == (422 if "resolve" not in detail else 400, detail)


def test_a_redirect_error_names_the_redirecting_url_without_its_query_or_fragment(
        photos: PhotoServer, loopback: LoopbackOnly) -> None:
    detail = refused(loopback_fetcher(loopback), f"{photos.base}/to?url=ftp://files.example/x#part", 400)
    assert detail == (f"image_url's redirect from {photos.base}/to: only http and https URLs are fetched, "
                      f"not 'ftp'")


def test_proxy_settings_in_the_environment_are_not_followed(photos: PhotoServer,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy would connect to the name again, past the address check: the fetch goes to the checked address
    whatever HTTP_PROXY says (here a closed port, which would fail the fetch)."""
    closed = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, closed)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    fetcher = UrlFetcher(policy(allow_hosts=frozenset({"127.0.0.1"})))  # the real transport
    assert fetch(fetcher, photos.base + "/cat.jpg") == PHOTO
