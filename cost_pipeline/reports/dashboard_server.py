"""The written dashboard over HTTP on loopback, so an http page (Dagster's asset page) can link to it.

A browser refuses file:// links from an http page. This serves the one HTML file at `/` and
`/dashboard.html` and nothing else of the filesystem: every other path, `/../` and absolute paths
included, is a 404. The file is read on each request, so a page the asset or the CLI rewrites
(they replace it atomically) is served fresh without a restart.
"""

import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

PAGE_PATHS = {"/", "/dashboard.html"}
"""The only paths served; any other is a 404."""


class DashboardServer(ThreadingHTTPServer):
    """A bound HTTP server for one dashboard file, answering from a daemon thread once `serve` starts it."""

    daemon_threads = True

    def __init__(self, page: Path, host: str, port: int):
        self.page = page
        self.thread: threading.Thread | None = None
        super().__init__((host, port), _PageHandler)

    @property
    def url(self) -> str:
        """The page's address, with the port actually bound (port 0 picks a free one)."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/"

    def wait(self) -> None:
        """Block until the server is closed (or the process is interrupted)."""
        if self.thread is not None:
            self.thread.join()

    def close(self) -> None:
        """Stop answering and release the port."""
        if self.thread is not None:
            self.shutdown()
            self.thread.join()
        self.server_close()

    def __exit__(self, *exc_info) -> None:
        self.close()


def serve(folder_or_file: str | Path, host: str = "127.0.0.1", port: int = 8765) -> DashboardServer:
    """Serve the dashboard at http://host:port/ from a background thread; returns the running server.

    `folder_or_file` is the HTML file, or the folder whose `dashboard.html` it is. Use it as a
    context manager, or call `close()`; `wait()` blocks for as long as it runs (the CLI's case).
    """
    path = Path(folder_or_file)
    page = path / "dashboard.html" if path.is_dir() else path
    server = DashboardServer(page.resolve(), host, port)
    server.thread = threading.Thread(target=server.serve_forever, name="dashboard-server", daemon=True)
    server.thread.start()
    return server


class _PageHandler(BaseHTTPRequestHandler):
    """Answers GET and HEAD of the page's two paths with the file as it is now; anything else is a 404."""

    server: DashboardServer

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        if urlsplit(self.path).path not in PAGE_PATHS:
            self._plain(HTTPStatus.NOT_FOUND, "not found: this server serves only the cost dashboard at /\n", send_body)
            return
        try:
            body = self.server.page.read_bytes()
        except FileNotFoundError:
            message = f"no dashboard at {self.server.page} yet: run `cost-pipeline dashboard` first\n"
            self._plain(HTTPStatus.NOT_FOUND, message, send_body)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _plain(self, status: HTTPStatus, message: str, send_body: bool) -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        """Quiet: a dashboard's page views are not the pipeline's log."""
