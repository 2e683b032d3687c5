"""The render server behind a real nginx: TLS ended by nginx with its own certificate, the WebSocket upgrade passed
on to the server's HTTPS under a path prefix, as a shared host or a cloud GPU's front end serves it.

The nginx ``location`` block is README.md's own (section "Rendering on another machine"), with only the server's
port and certificate path put in: what the README tells a user to write is what runs here.  nginx's certificate is
signed by a certificate authority made for the test, which the client trusts only when ``SSL_CERT_FILE`` names it:
so the same proxy stands for one with a self-signed certificate (pinned with ``--fingerprint``) and for one with an
authority's (no ``--fingerprint``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from live.remote.client import RemoteError, RemoteRenderer
from live.remote.tls import certificate_fingerprint

from .live_media import REPO, driving_frames, write_avatar, write_video
from .test_remote_live import CLIENT_ARGS, assert_same_frames, client_env
from .test_remote_server import ServerProcess, free_port

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")  # sbin: not on every PATH
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx not installed: apt-get install nginx")

PREFIX = "/fomm/"  # the README's
DOWN_PREFIX = "/down/"  # the same block, its upstream a port where nothing listens
FRAMES = 8


@dataclass(frozen=True)
class ProxyCertificate:
    authority: Path  # the test's certificate authority, PEM
    cert: Path  # nginx's certificate (127.0.0.1 and localhost), signed by the authority, PEM
    key: Path
    fingerprint: str  # SHA-256 of nginx's certificate


def make_proxy_certificate(folder: Path) -> ProxyCertificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def builder(subject: str, issuer: str, public_key) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                .public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))

    authority_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    usage = dict(digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                 key_agreement=False, encipher_only=False, decipher_only=False)
    authority = (builder("fomm-live test authority", "fomm-live test authority", authority_key.public_key())
                 .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                 .add_extension(x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage), critical=True)
                 .sign(authority_key, hashes.SHA256()))
    certificate = (builder("fomm-live test proxy", "fomm-live test authority", key.public_key())
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_key.public_key()),
                                  critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(authority_key, hashes.SHA256()))
    (folder / "authority.pem").write_bytes(authority.public_bytes(serialization.Encoding.PEM))
    (folder / "proxy.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / "proxy.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return ProxyCertificate(folder / "authority.pem", folder / "proxy.pem", folder / "proxy.key",
                            certificate_fingerprint(folder / "proxy.pem"))


def readme_location(prefix: str, upstream_port: int, upstream_cert: Path) -> str:
    """README.md's nginx block, pointed at this test's server."""
    readme = (REPO / "README.md").read_text()
    found = re.search(r"```nginx\n(.*?)```", readme[readme.index("## Rendering on another machine"):], re.S)
    assert found, "README.md's section 'Rendering on another machine' has no nginx block"
    block = found.group(1)
    for pattern, replacement in ((r"location /fomm/ \{", f"location {prefix} {{"),
                                 (r"proxy_pass https://127\.0\.0\.1:8765/;", f"proxy_pass https://127.0.0.1:{upstream_port}/;"),
                                 (r"proxy_ssl_trusted_certificate \S+;", f"proxy_ssl_trusted_certificate {upstream_cert};")):
        block, count = re.subn(pattern, lambda _: replacement, block)
        assert count == 1, f"README.md's nginx block has no line matching {pattern!r}:\n{block}"
    return block


class NginxProcess:
    """nginx in the foreground, everything it writes (pid, logs, temporary files) in ``folder``."""

    def __init__(self, folder: Path, port: int, certificate: ProxyCertificate, locations: list[str]):
        self.folder, self.port = folder, port
        folder.mkdir(parents=True, exist_ok=True)
        temporary = " ".join(f"{kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                                "uwsgi", "scgi"))
        self.conf = folder / "nginx.conf"
        self.conf.write_text(f"""
pid {folder / 'nginx.pid'};
error_log {folder / 'error.log'} info;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log {folder / 'access.log'};
    {temporary}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {certificate.cert};
        ssl_certificate_key {certificate.key};
        {"".join(locations)}
    }}
}}
""")
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 15) -> NginxProcess:
        self.process = subprocess.Popen([NGINX, "-p", str(self.folder), "-c", str(self.conf), "-g", "daemon off;"],
                                        stdout=subprocess.DEVNULL, stderr=open(self.folder / "stderr.log", "w"))
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"nginx did not start: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)

    def log(self) -> str:
        return "".join(path.read_text() for path in (self.folder / "stderr.log", self.folder / "error.log")
                       if path.exists())

    def access_log(self) -> str:
        path = self.folder / "access.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown: open WebSockets are cut
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    return {"avatar": write_avatar(folder / "avatar.png"),
            "driving": write_video(folder / "driving.mp4", driving_frames(FRAMES))}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = ServerProcess(tmp_path_factory.mktemp("server") / "home", free_port()).start()
    yield running
    if running.process.poll() is None:
        assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> ProxyCertificate:
    return make_proxy_certificate(tmp_path_factory.mktemp("proxy-certificate"))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, server, certificate):
    server_cert = server.home / "server" / "cert.pem"
    nobody_listens = free_port()
    running = NginxProcess(tmp_path_factory.mktemp("nginx"), free_port(), certificate,
                           [readme_location(PREFIX, server.port, server_cert),
                            readme_location(DOWN_PREFIX, nobody_listens, server_cert),
                            "location /private/ { return 403; }",
                           "location / { return 404; }"]).start()  # the site's other paths
    yield running
    running.stop()


def proxied_url(proxy: NginxProcess, prefix: str = PREFIX) -> str:
    return f"wss://127.0.0.1:{proxy.port}{prefix}v1/session"


class ClientRun:
    """``run_live.py`` in a subprocess, started now, in a folder of its own (its data directory, output, stderr)."""

    def __init__(self, folder: Path, token: str, *args: str):
        self.folder, self.output = folder, folder / "out.mp4"
        folder.mkdir(parents=True)
        self.stderr_path = folder / "stderr.log"
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen([sys.executable, str(REPO / "run_live.py"), *CLIENT_ARGS, *args, "--output",
                                             str(self.output)], cwd=folder, env=client_env(folder, token),
                                            stdout=subprocess.DEVNULL, stderr=stderr)

    def result(self, timeout: float = 300) -> tuple[int, str]:
        """(exit status, stderr) once it has ended."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"run_live.py did not end within {timeout} s: {self.stderr_path.read_text()}") from None
        return self.process.returncode, self.stderr_path.read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, media, server, proxy, certificate):
    """This module's command lines, started together: most of each run is start-up, and one is a 10 s wait."""
    folder = tmp_path_factory.mktemp("runs")
    camera = ["--source", str(media["avatar"]), "--camera", str(media["driving"])]
    started = {}
    try:
        started["local"] = ClientRun(folder / "local", "", *camera)
        started["pinned"] = ClientRun(folder / "pinned", server.token, *camera, "--remote", proxied_url(proxy),
                                      "--fingerprint", certificate.fingerprint, "--max-frames", str(FRAMES))
        started["server down"] = ClientRun(folder / "server-down", server.token, *camera, "--remote",
                                           proxied_url(proxy, DOWN_PREFIX), "--fingerprint", certificate.fingerprint)
        yield started
    finally:
        for run in started.values():
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait()


def test_through_nginx_under_a_path_the_clients_output_matches_a_local_render(runs, server, proxy, certificate):
    status, stderr = runs["pinned"].result()
    assert status == 0, stderr + proxy.log()
    assert f"rendering on {proxied_url(proxy)}: only the avatar and keypoints leave this machine" in stderr
    status, stderr = runs["local"].result()
    assert status == 0, stderr
    assert_same_frames(runs["pinned"].output, runs["local"].output, FRAMES)
    # It went through nginx (the certificate pinned is nginx's, not the server's), under the prefix, upgraded.
    assert certificate.fingerprint != server.fingerprint
    deadline = time.monotonic() + 10
    while f"GET {PREFIX}v1/session HTTP/1.1\" 101" not in proxy.access_log():  # logged when the WebSocket ends
        assert time.monotonic() < deadline, proxy.access_log()
        time.sleep(0.05)


def test_a_proxy_certificate_from_an_authority_the_system_trusts_needs_no_fingerprint(tmp_path, server, proxy,
                                                                                     certificate):
    # A process of its own: the authorities a process trusts (here only the test's, by SSL_CERT_FILE) are read once.
    known = tmp_path / "known.json"
    connect = ("import sys; from pathlib import Path; from live.remote.client import RemoteRenderer\n"
               "client = RemoteRenderer(sys.argv[1], sys.argv[2], known_hosts=Path(sys.argv[3]))\n"
               "client.start(timeout=10); print(client.connected, client.frame_size); client.close()")
    result = subprocess.run([sys.executable, "-c", connect, proxied_url(proxy), server.token, str(known)], cwd=REPO,
                            env={**os.environ, "SSL_CERT_FILE": str(certificate.authority)}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("True (256, 256)"), result.stderr
    assert not known.exists(), "a certificate an authority vouches for is not pinned"


def test_with_nginx_up_and_the_server_down_the_client_says_so_and_exits_non_zero(runs, proxy):
    status, stderr = runs["server down"].result(timeout=120)
    assert status == 1, stderr
    # nginx answers 502 Bad Gateway; the client retries for its 10 s of start-up, then names the address and the 502.
    url = re.escape(proxied_url(proxy, DOWN_PREFIX))
    assert re.search(rf"error: (no answer from|cannot reach the render server at) {url}\b.*HTTP 502 Bad Gateway: the "
                     r"render server \(or the proxy or tunnel in front of it\) is not answering", stderr), stderr
    assert "Traceback" not in stderr and not runs["server down"].output.exists()
    assert re.search(r"connect\(\) failed \(\d+: Connection refused\) while connecting to upstream", proxy.log())


def test_through_a_proxy_the_certificate_the_client_checks_is_the_proxys(tmp_path, server, proxy, certificate):
    # The fingerprint --serve printed is the server's own: through the proxy it is refused, naming the proxy's.
    pinned = RemoteRenderer(proxied_url(proxy), server.token, fingerprint=server.fingerprint,
                            known_hosts=tmp_path / "known.json")
    with pytest.raises(RemoteError, match=f"presented a certificate with fingerprint {certificate.fingerprint}, not "
                                          f"{server.fingerprint}"):
        pinned.start(timeout=10)
    # Without one (and an authority the system does not know), the proxy's certificate is trusted on first use.
    first_use = RemoteRenderer(proxied_url(proxy), server.token, known_hosts=tmp_path / "known.json")
    first_use.start(timeout=10)
    try:
        assert first_use.connected and first_use.frame_size is not None
    finally:
        first_use.close()
    assert f'"127.0.0.1:{proxy.port}": "{certificate.fingerprint}"' in (tmp_path / "known.json").read_text()


def test_a_path_the_proxy_does_not_serve_is_named(tmp_path, server, proxy, certificate):
    client = RemoteRenderer(proxied_url(proxy, "/elsewhere/"), server.token, fingerprint=certificate.fingerprint,
                            known_hosts=tmp_path / "known.json")
    with pytest.raises(RemoteError, match=r"no render server at wss://127\.0\.0\.1:\d+/elsewhere/v1/session \(HTTP 404\)"):
        client.start(timeout=10)


def test_an_answer_that_is_no_websocket_is_refused_at_once(tmp_path, server, proxy, certificate):
    # A page the site forbids (HTTP 403) is no render server: the client says so instead of retrying for 10 s.
    client = RemoteRenderer(proxied_url(proxy, "/private/"), server.token, fingerprint=certificate.fingerprint,
                            known_hosts=tmp_path / "known.json")
    begin = time.monotonic()
    with pytest.raises(RemoteError, match=r"answered HTTP 403 Forbidden, not a WebSocket upgrade \(HTTP 101\)"):
        client.start(timeout=10)
    assert time.monotonic() - begin < 8, "a 403 was retried as if the server were restarting"
