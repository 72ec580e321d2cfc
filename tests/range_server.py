"""Real HTTP servers on loopback for the remote-source tests: Python's threaded ``http.server`` with
``Range`` support (and, for the hub, the two endpoints ``huggingface_hub`` and the range reader use), and
nginx from Debian when installed.

The Python server can misbehave on purpose, like a flaky or broken server would: drop the connection in
the middle of a range body, send a body shorter than its ``Content-Length``, or ignore ``Range`` and answer
``200`` with the whole file. It counts connections, requests and body bytes, so a test can assert that
nothing was fetched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class RangeServer:
    """Serve ``root`` on 127.0.0.1 (a free port) in a background thread.

    ``hub``: ``{"org/name": folder}`` served as a Hugging Face hub at this server's address
    (``/api/models/org/name/revision/<rev>`` and ``/org/name/resolve/<commit>/<file>``).
    ``fault``: None, "drop", "short" or "ignore-range", applied to the next ``fault_times`` range responses
    of more than ``fault_min_bytes`` bytes.
    """

    def __init__(self, root: Path | None = None, *, hub: dict[str, Path] | None = None) -> None:
        self.root = Path(root) if root else None
        self.hub = {k: Path(v) for k, v in (hub or {}).items()}
        self.commit = "0123456789abcdef0123456789abcdef01234567"
        self.connections = 0
        self.requests: list[str] = []
        self.body_bytes = 0
        self.fault: str | None = None
        self.fault_times = 0
        self.fault_min_bytes = 4096
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                with server._lock:
                    server.connections += 1
                super().setup()

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                with server._lock:
                    server.requests.append(f"{self.command} {self.path} {self.headers.get('Range', '')}")
                path = unquote(urlsplit(self.path).path)
                for prefix, host in (("/redirect-away/", "localhost"), ("/redirect-here/", "127.0.0.1")):
                    if path.startswith(prefix):  # a redirect to another host name, or to this one
                        self.send_response(302)
                        self.send_header("Location", f"http://{host}:{server.port}/{path[len(prefix):]}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                api = re.match(r"^/api/models/([^/]+/[^/]+)/revision/([^/]+)$", path)
                if api and api.group(1) in server.hub:
                    return self._send_bytes(server._listing(api.group(1)), "application/json")
                resolve = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
                if resolve and resolve.group(1) in server.hub:
                    file = server.hub[resolve.group(1)] / resolve.group(3)
                elif server.root is not None:
                    file = server.root / path.lstrip("/")
                else:
                    file = None
                if file is None or ".." in Path(path).parts or not file.is_file():
                    return self._send_bytes(b"not found", "text/plain", status=404)
                self._send_file(file, head)

            def _send_bytes(self, body: bytes, ctype: str, status: int = 200) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _send_file(self, file: Path, head: bool) -> None:
                size = file.stat().st_size
                etag = f'"{size:x}-{int(file.stat().st_mtime):x}"'
                wanted = _RANGE.match(self.headers.get("Range", "").strip())
                fault = None
                if wanted:
                    lo = int(wanted.group(1))
                    hi = min(int(wanted.group(2)) if wanted.group(2) else size - 1, size - 1)
                    with server._lock:
                        if server.fault and server.fault_times > 0 and hi - lo + 1 > server.fault_min_bytes:
                            fault = server.fault
                            server.fault_times -= 1
                if wanted and fault != "ignore-range":
                    if lo >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {lo}-{hi}/{size}")
                else:
                    lo, hi = 0, size - 1
                    self.send_response(200)
                self.send_header("Content-Length", str(hi - lo + 1))
                self.send_header("ETag", etag)
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if head:
                    return
                n = hi - lo + 1
                send = n // 2 if fault in ("drop", "short") else n
                with open(file, "rb") as fh:
                    fh.seek(lo)
                    left = send
                    while left:
                        piece = fh.read(min(left, 1 << 20))
                        self.wfile.write(piece)
                        left -= len(piece)
                with server._lock:
                    server.body_bytes += send
                if fault == "drop":  # the connection dies mid-body
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                elif fault == "short":  # the body ends early and the server closes
                    self.wfile.flush()
                    self.close_connection = True

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:  # a client hanging up is expected here
                pass

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _listing(self, repo: str) -> bytes:
        folder = self.hub[repo]
        siblings = []
        for p in sorted(folder.iterdir()):
            if not p.is_file():
                continue
            entry = {"rfilename": p.name, "size": p.stat().st_size}
            if p.suffix == ".safetensors":
                entry["lfs"] = {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                                "pointerSize": 134}
            siblings.append(entry)
        return json.dumps({"id": repo, "sha": self.commit, "siblings": siblings}).encode()

    def reset_counts(self) -> None:
        with self._lock:
            self.connections, self.requests, self.body_bytes = 0, [], 0

    def __enter__(self) -> "RangeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


class Nginx:
    """nginx (Debian package ``nginx``/``nginx-light``) serving ``root`` on loopback with its own temporary
    config, prefix and logs; started and stopped by the caller (the process it started, by its pid)."""

    def __init__(self, root: Path) -> None:
        if NGINX is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
        self.root = Path(root).resolve()
        self.dir = Path(tempfile.mkdtemp(prefix="modellineage-nginx-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.dir / "logs").mkdir()
        (self.dir / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {self.dir}/logs/access.log;
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        location / {{ autoindex off; }}
    }}
}}
""")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Nginx":
        self.proc = subprocess.Popen([NGINX, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode()[:500]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start listening within 10 s")

    def access_log(self) -> list[str]:
        path = self.dir / "logs" / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
