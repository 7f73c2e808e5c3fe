"""S3 faults, injected by a proxy in front of the moto server: transient 503 SlowDown answers are
retried with backoff and the run is exact; a listing refused for permission fails fast, before Ray,
and an object refused for permission mid-run stops the run, each with one clear message and
nothing committed."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest
from click.testing import CliRunner

from imgclf_ray.cli import main
from imgclf_ray.io.listing import list_archive
from imgclf_ray.runner.job import execute
from tests.corpus import digit_images, png_bytes
from tests.support.jobs import make_spec

pytestmark = [pytest.mark.ray, pytest.mark.s3]

ERROR = "<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{msg}</Message></Error>"


class FaultyProxy:
    """Forwards to moto; ``rule(method, path)`` may answer instead: (status, code, message)."""

    def __init__(self, upstream: str, rule):
        self.upstream = urlparse(upstream).netloc
        self.rule = rule
        self.injected = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy.rule(self.command, self.path)
                if fault:
                    proxy.injected += 1
                    status, code, msg = fault
                    data = ERROR.format(code=code, msg=msg).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def digits_on_s3(s3):
    for name, img in digit_images(12):
        s3.pipe(f"archive/digits/{name}.png", png_bytes(img))
    return s3


def test_transient_slowdowns_are_retried_and_the_run_is_exact(ray_session, digits_on_s3, moto_server,
                                                              tiny_model, tmp_path):
    seen: dict[str, int] = {}

    def slow_down_once(method, path):  # each refusal costs a back-off of its own (seconds)
        if method == "GET" and path.startswith("/archive/digits/") and "?" not in path:
            seen[path] = seen.get(path, 0) + 1
            if seen[path] <= 1:
                return 503, "SlowDown", "Please reduce your request rate."
        return None

    proxy = FaultyProxy(moto_server, slow_down_once)
    try:
        spec = make_spec("s3://archive/digits", str(tmp_path / "out"), tiny_model,
                         storage={"endpoint_url": proxy.url})
        result = execute(spec, list_archive(spec.source, spec.storage), "r1")
    finally:
        proxy.close()
    assert result.by_status == {"ok": 12}
    assert proxy.injected == 12 and all(n == 2 for n in seen.values())  # refused, then served


def test_a_listing_refused_for_permission_fails_fast_and_commits_nothing(digits_on_s3, moto_server,
                                                                       tiny_model, tmp_path):
    proxy = FaultyProxy(moto_server, lambda method, path: (403, "AccessDenied", "Access Denied")
                        if method == "GET" and "list-type" in path else None)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: denied\nsource: {{uri: s3://archive/digits}}\nmodel: {{uri: {tiny_model}}}\n"
                   f"sink: {{uri: {tmp_path / 'out'}}}\nstorage: {{endpoint_url: '{proxy.url}'}}\nrun: {{executor: ray}}\n")
    try:
        result = CliRunner().invoke(main, ["run", str(job), "-q"])
    finally:
        proxy.close()
    assert result.exit_code == 1, result.output
    assert "error: s3://archive/digits: cannot list (PermissionError: access denied)" in result.output
    assert "Traceback" not in result.output
    assert proxy.injected >= 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_an_object_refused_for_permission_mid_run_stops_the_run_and_commits_nothing(
        executor, ray_session, digits_on_s3, moto_server, tiny_model, tmp_path):
    denied = "/archive/digits/digit-07-7.png"
    proxy = FaultyProxy(moto_server, lambda method, path: (403, "AccessDenied", "Access Denied")
                        if method == "GET" and path == denied else None)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: denied\nsource: {{uri: s3://archive/digits}}\nmodel: {{uri: {tiny_model}}}\n"
                   f"sink: {{uri: {tmp_path / 'out'}}}\nstorage: {{endpoint_url: '{proxy.url}'}}\n"
                   f"run: {{executor: {executor}}}\n")
    try:
        result = CliRunner().invoke(main, ["run", str(job), "-q", "--run-id", "r1"])
    finally:
        proxy.close()
    assert result.exit_code == 1, result.output
    assert ("error: s3://archive/digits/digit-07-7.png: access denied (PermissionError) while reading"
            in result.output) and "nothing was committed" in result.output
    assert "Traceback" not in result.output and proxy.injected >= 1
    out = tmp_path / "out"
    assert not (out / "r1").exists() and not list(out.rglob("*.parquet*"))
