"""``blt dashboard DATASET_URL | RUN_URL [RUN_URL ...] [--serve]``.

A dataset (``blt stats`` wrote its ``dashboard.html``): print where the page is, or serve it on 127.0.0.1.
Training runs (a ``metrics.jsonl``, ``metrics/`` parts or ``checkpoints/``): write one self-contained page with
the runs overlaid (``<run>/dashboard.html`` for one run, ``runs-dashboard.html`` here for several, or ``--output``),
or serve it on 127.0.0.1, redrawn from the runs every few seconds while they train.
"""

from __future__ import annotations

import http.server
from dataclasses import dataclass

from pipeline.io.logs import get_logger, setup_logging
from pipeline.io.storage import exists, join, read_bytes

from .common import dataclass_parser, parse_config, run_main

log = get_logger(__name__)


@dataclass
class DashboardJob:
    urls: list[str]  # a dataset root (run `blt stats` first) or one or more training run outputs
    serve: bool = False  # serve the page on 127.0.0.1 (runs: kept up to date)
    port: int = 8700
    output: str | None = None  # runs: where to write the page (any fsspec URL)
    refresh: float = 10.0  # runs with --serve: seconds between redraws


CONFIG = DashboardJob  # the schema: flags, help and YAML keys


def build_parser():
    return dataclass_parser(DashboardJob, "blt dashboard", __doc__, positional=("urls",))


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


def is_dataset(url: str) -> bool:
    return exists(join(url, "manifest.json")) or (exists(join(url, "dashboard.html")) and exists(join(url, "stats.json")))


def serve(server: http.server.ThreadingHTTPServer, what: str) -> int:
    setup_logging()
    log.info("serving %s at http://127.0.0.1:%d/ (Ctrl-C to stop)", what, server.server_address[1])
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def dataset_page(args: DashboardJob) -> int:
    (dataset,) = args.urls
    url = join(dataset, "dashboard.html")
    if not exists(url):
        raise FileNotFoundError(f"no dashboard at {url}: run `blt stats {dataset}` first")
    if not args.serve:
        print(url)
        return 0
    return serve(make_server(dataset, args.port), url)


def runs_page(args: DashboardJob) -> int:
    from training.run_dashboard import make_run_server, write_run_dashboard

    if args.serve:
        return serve(make_run_server(args.urls, args.port, args.refresh), ", ".join(args.urls))
    print(write_run_dashboard(args.urls, args.output))
    return 0


def main(argv: list[str] | None = None) -> int:
    args, _ = parse_config(build_parser(), DashboardJob, argv)
    if not args.urls:
        raise SystemExit("blt dashboard: give a dataset URL or one or more training run URLs")

    def body() -> int:
        from training.run_dashboard import is_run

        datasets = [u for u in args.urls if is_dataset(u)]
        if datasets and (len(args.urls) > 1 or is_run(datasets[0])):
            raise ValueError("give one dataset, or one or more training runs (not both)")
        if datasets:
            return dataset_page(args)
        not_runs = [u for u in args.urls if not is_run(u)]
        if not_runs:
            raise FileNotFoundError(f"{not_runs[0]} is neither a dataset (manifest.json) nor a training run "
                                    "(metrics.jsonl, metrics/ or checkpoints/)")
        return runs_page(args)

    return run_main("dashboard", body)


if __name__ == "__main__":
    raise SystemExit(main())
