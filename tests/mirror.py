"""A local HTTP mirror for download tests: serves a folder, plus broken variants of it.

``/ok/NAME`` serves the file; ``/short/NAME`` promises the full length and sends half;
``/error/NAME`` answers 500; ``/endless/NAME`` sends the file, then zeros without end and
without a length; ``/liar/NAME`` announces a terabyte. Bound to 127.0.0.1 on a free port, stopped by the test.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def serve(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    """Start the mirror; returns the server (call ``shutdown``) and its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            _, mode, name = self.path.split("/", 2)
            target = folder / name
            if mode == "error":
                self.send_error(500, "deliberate failure")
                return
            if not target.is_file():
                self.send_error(404)
                return
            data = target.read_bytes()
            self.send_response(200)
            if mode != "endless":
                self.send_header("Content-Length", str(1 << 40 if mode == "liar" else len(data)))
            self.end_headers()
            try:
                self.wfile.write(data[: len(data) // 2] if mode == "short" else data)
                while mode == "endless":
                    self.wfile.write(b"\0" * 65536)
            except OSError:  # the client hung up (it cut the download off)
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
