"""The agent's OIDC runner reaching an https issuer only through the Browser VM's egress proxy.

Real parts on 127.0.0.1: an https issuer (a self-signed certificate the test trusts through
``SSL_CERT_FILE``, as a VM trusts public roots), the controller's ``EgressProxy`` (its own event
loop in a thread), and the runner's discovery request going through the proxy as a CONNECT
tunnel. A proxy whose allowlist lacks the issuer refuses, and the login cannot start.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hearth.metrics import ControllerMetrics
from hearth.network.egress import EgressProxy
from hearth_agent.log import JsonLogger
from hearth_agent.login import LoginSession
from hearth_agent.oidc import DiscoveryFailed, OidcLoginRunner


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hearth test issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "issuer.pem", directory / "issuer.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Issuer:
    """An https server answering OIDC discovery for itself; counts the requests it served."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.requests = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.requests += 1
                base = issuer.url
                body = json.dumps(
                    {
                        "issuer": base,
                        "authorization_endpoint": f"{base}/auth",
                        "token_endpoint": f"{base}/token",
                        "code_challenge_methods_supported": ["S256"],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class ProxyThread:
    """An EgressProxy served by an event loop of its own, for synchronous callers."""

    def __init__(self, allow: list[str], allow_private: list[str]) -> None:
        self.metrics = ControllerMetrics()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = EgressProxy(allow, allow_private=allow_private, metrics=self.metrics)
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop).result(10)
        self.url = f"http://127.0.0.1:{self.proxy.port}"

    def count(self, outcome: str) -> float:
        labels = {"outcome": outcome}
        value = self.metrics.registry.get_sample_value("hearth_egress_requests_total", labels)
        return value or 0.0

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def issuer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Issuer]:
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the agent trusts it like a public root
    server = Issuer(cert, key)
    yield server
    server.close()


def runner_for(issuer: Issuer, proxy: str) -> OidcLoginRunner:
    body = {"provider": "oidc", "issuer": issuer.url, "client_id": "cli", "proxy": proxy}
    return OidcLoginRunner.from_request(body, logger=JsonLogger(stream=io.StringIO()))


def test_discovery_goes_through_the_egress_proxy_as_a_tunnel(issuer: Issuer) -> None:
    target = f"127.0.0.1:{issuer.port}"
    proxy = ProxyThread(allow=[target], allow_private=[target])
    runner = runner_for(issuer, proxy.url)
    try:
        url = runner.start(LoginSession(login_id="l1", provider="oidc"))
    finally:
        runner.cancel()
        proxy.close()
    assert url.startswith(f"{issuer.url}/auth?")
    assert issuer.requests == 1
    assert proxy.count("tunneled") == 1


def test_a_proxy_that_does_not_allow_the_issuer_stops_the_login(issuer: Issuer) -> None:
    proxy = ProxyThread(allow=["id.example.test"], allow_private=[])
    runner = runner_for(issuer, proxy.url)
    try:
        with pytest.raises(DiscoveryFailed) as raised:
            runner.start(LoginSession(login_id="l2", provider="oidc"))
    finally:
        runner.cancel()
        proxy.close()
    assert "403" in raised.value.message or "Forbidden" in raised.value.message
    assert issuer.requests == 0
    assert proxy.count("denied_host") == 1
