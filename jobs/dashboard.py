"""``blt dashboard DATASET_URL [--serve]``: print where the dashboard is, or serve it on 127.0.0.1."""

from __future__ import annotations

import http.server
from dataclasses import dataclass

from pipeline.io.logs import get_logger, setup_logging
from pipeline.io.storage import exists, join, read_bytes

from .common import dataclass_parser, parse_config, run_main

log = get_logger(__name__)


@dataclass
class DashboardJob:
    dataset: str  # dataset root URL (run `blt stats` first)
    serve: bool = False  # serve dashboard.html and stats.json on 127.0.0.1
    port: int = 8700


CONFIG = DashboardJob  # the schema: flags, help and YAML keys


def build_parser():
    return dataclass_parser(DashboardJob, "blt dashboard", __doc__, positional=("dataset",))


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
    args, _ = parse_config(build_parser(), DashboardJob, argv)

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
