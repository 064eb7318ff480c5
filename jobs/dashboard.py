"""``blt dashboard DATASET_URL [--serve]``: print where the dashboard is, or serve it on 127.0.0.1."""

from __future__ import annotations

import argparse
import http.server

from pipeline.io.logs import get_logger, setup_logging
from pipeline.io.storage import exists, join, read_bytes

from .common import run_main

log = get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blt dashboard", description=__doc__)
    parser.add_argument("dataset", help="dataset root URL (run `blt stats` first)")
    parser.add_argument("--serve", action="store_true", help="serve dashboard.html and stats.json on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8700)
    return parser


def make_server(dataset: str, port: int) -> http.server.ThreadingHTTPServer:
    files = {"/": ("dashboard.html", "text/html; charset=utf-8"),
             "/dashboard.html": ("dashboard.html", "text/html; charset=utf-8"),
             "/stats.json": ("stats.json", "application/json")}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path not in files:
                self.send_error(404)
                return
            name, kind = files[self.path]
            body = read_bytes(join(dataset, name))  # read per request: a re-run of `blt stats` shows at once
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # keep the terminal quiet
            pass

    return http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        url = join(args.dataset, "dashboard.html")
        if not exists(url):
            raise FileNotFoundError(f"no dashboard at {url}: run `blt stats {args.dataset}` first")
        if not args.serve:
            print(url)
            return 0
        setup_logging()
        server = make_server(args.dataset, args.port)
        log.info("serving %s at http://127.0.0.1:%d/ (Ctrl-C to stop)", url, server.server_address[1])
        try:
            server.serve_forever()
        finally:
            server.server_close()
        return 0

    return run_main("dashboard", body)


if __name__ == "__main__":
    raise SystemExit(main())
