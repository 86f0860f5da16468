"""The SkyServer stand-in: a small HTTP server on 127.0.0.1 that answers SqlSearch and ImgCutout/getjpeg like
SkyServer does, from catalog CSVs loaded into SQLite, with optional injected faults (latency, 5xx, 429 with
Retry-After, error pages with HTTP 200, corrupt JPEGs). Its cutouts are SIMULATED images (see render.py).

Endpoints (``<release>`` is e.g. ``dr17``; paths are case-insensitive like SkyServer's IIS):

- ``GET|POST /<release>/SkyServerWS/SearchTools/SqlSearch?cmd=SQL&format=csv|json``
  csv: ``#Table1`` line, header, rows; json: ``[{"TableName": "Table1", "Rows": [{...}, ...]}]``. At most
  ``row_cap`` rows are returned (the rest silently dropped, as SkyServer does). Bad SQL gets HTTP 500 with a
  plain-text error body naming the problem, like SkyServer's web service.
- ``GET /<release>/SkyServerWS/ImgCutout/getjpeg?ra=&dec=&scale=&width=&height=&opt=``
  width/height are clamped to 64..2048 like SkyServer's. Every JPEG answer carries the header
  ``X-Skyclass-Standin: rendered`` (``skyserver.STANDIN_HEADER``), so the downloader records its cutouts as
  ``standin-simulated`` whatever URL it was given.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import random
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Sequence
from urllib.parse import parse_qs, urlsplit

import pandas as pd

from skyclass.errors import SkyclassError
from skyclass.skyserver import STANDIN_HEADER, STANDIN_RENDERED
from skyclass.standin.sqlite_catalog import CatalogLoadError, SqliteCatalog, StandinSQLError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
SQLSEARCH = "sqlsearch"
GETJPEG = "getjpeg"
_SQLSEARCH_PATH = "skyserverws/searchtools/sqlsearch"
_GETJPEG_PATH = "skyserverws/imgcutout/getjpeg"
MIN_CUTOUT_PX = 64
MAX_CUTOUT_PX = 2048
DEFAULT_SCALE_ARCSEC_PER_PX = 0.396
# Light of a bright galaxy reaches tens of arcseconds beyond its centre: look that far outside the field.
_FIELD_MARGIN_ARCSEC = 40.0
# What SkyServer's IIS front end serves when the back end fails mid-request: an HTML page with status 200.
_ERROR_PAGE = ("<html><head><title>SkyServer - Error</title></head><body><h1>Server Error in '/' Application."
               "</h1><p>Error: The service is temporarily unavailable (simulated by the skyclass stand-in)."
               "</p></body></html>")


class StandinError(SkyclassError):
    """The stand-in cannot start (bad address, missing catalog, port in use)."""


@dataclass(frozen=True)
class Faults:
    """Injected faults; each probability is drawn per request from a generator seeded with ``seed``.

    Attributes
    ----------
    latency_ms : float
        Delay added to every request before it is answered.
    error_rate : float
        Probability of HTTP 500 or 503.
    throttle_rate : float
        Probability of HTTP 429 with ``Retry-After: retry_after_s``.
    retry_after_s : float
        Value of the Retry-After header (seconds; fractions allowed for fast tests).
    error_body_rate : float
        Probability of HTTP 200 whose body is an error page instead of data.
    corrupt_rate : float
        getjpeg only: probability of a truncated or corrupt JPEG body with HTTP 200.
    seed : int
        Seed of the fault generator.
    """

    latency_ms: float = 0.0
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after_s: float = 1.0
    error_body_rate: float = 0.0
    corrupt_rate: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name in ("error_rate", "throttle_rate", "error_body_rate", "corrupt_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Faults.{name} must be a probability in [0, 1], got {value!r}")
        for name in ("latency_ms", "retry_after_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"Faults.{name} must be >= 0, got {getattr(self, name)!r}")


class StandinServer:
    """A SkyServer stand-in serving ``catalogs`` on 127.0.0.1.

    Parameters
    ----------
    catalogs : sequence of path or DataFrame
        Catalog CSVs (SkyServer export columns) or frames in the same layout.
    host : str
        Must be 127.0.0.1 (or localhost): the stand-in runs arbitrary read-only SQL and is never exposed.
    port : int
        0 picks a free port (see :attr:`url`).
    release : str
        Data release path segment, e.g. ``dr17``.
    faults : Faults
        Injected faults; :attr:`faults` can be reassigned while the server runs.
    row_cap : int
        SqlSearch returns at most this many rows.

    Raises
    ------
    StandinError
        A non-loopback host, or a catalog that cannot be loaded.
    """

    def __init__(self, catalogs: Sequence[str | Path | pd.DataFrame], *, host: str = LOOPBACK, port: int = 0,
                 release: str = "dr17", faults: Faults = Faults(), row_cap: int = 500_000):
        if host not in (LOOPBACK, "localhost"):
            raise StandinError(f"the stand-in only binds 127.0.0.1 (it runs any read-only SQL it is sent and must "
                               f"not be reachable from other machines); got host {host!r}")
        if not release or "/" in release:
            raise StandinError(f"release must be a path segment such as dr17, got {release!r}")
        if row_cap <= 0:
            raise StandinError(f"row_cap must be > 0, got {row_cap}")
        try:
            self.catalog = SqliteCatalog(catalogs)
        except CatalogLoadError as err:
            raise StandinError(str(err)) from None
        self.release = release
        self.row_cap = row_cap
        self._port = port
        self._lock = threading.Lock()
        self._faults = faults
        self._rng = random.Random(faults.seed)
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._times: dict[str, list[float]] = defaultdict(list)
        self._queries: list[str] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._gates: dict[str, Gate] = {}

    # --- lifecycle ---
    def start(self) -> "StandinServer":
        """Bind and serve in a background thread; returns self."""
        if self._httpd is not None:
            return self
        try:
            httpd = ThreadingHTTPServer((LOOPBACK, self._port), _handler_class(self))
        except OSError as err:
            raise StandinError(f"cannot listen on {LOOPBACK}:{self._port} ({err}); pick another --port") from None
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="skyserver-standin", daemon=True)
        self._thread.start()
        log.info("SkyServer stand-in serving %s (SqlSearch, ImgCutout/getjpeg; cutouts are SIMULATED)", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._httpd is None:
            return
        with self._lock:
            gates = list(self._gates.values())
        for gate in gates:  # held handler threads must not outlive the server
            gate.release()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> "StandinServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise StandinError("the stand-in is not started; call start() first")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL including the release, e.g. ``http://127.0.0.1:8089/dr17`` (what skyserver.url expects)."""
        return f"http://{LOOPBACK}:{self.port}/{self.release}"

    # --- faults and statistics ---
    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        with self._lock:
            self._faults = value
            self._rng = random.Random(value.seed)

    def stats(self) -> dict:
        """Counters per endpoint (``sqlsearch``, ``getjpeg``, ``other``): ``requests``, one key per HTTP status
        sent (``"200"``, ``"429"``, ...), and ``error_body`` / ``corrupt`` for those injected faults."""
        with self._lock:
            return {endpoint: dict(counts) for endpoint, counts in self._counts.items()}

    def request_times(self, endpoint: str) -> list[float]:
        """``time.monotonic()`` arrival times of the requests to ``endpoint`` (``sqlsearch`` or ``getjpeg``)."""
        with self._lock:
            return list(self._times[endpoint])

    def queries(self) -> list[str]:
        """The SQL of every SqlSearch request received, in arrival order."""
        with self._lock:
            return list(self._queries)

    def hold(self, endpoint: str, after: int) -> "Gate":
        """Answer the first ``after`` requests to ``endpoint`` (``sqlsearch`` or ``getjpeg``) from now on, then hold
        every further one until :meth:`Gate.release`: a test can stop a job in its middle at a known point (kill
        an executor or the driver) without guessing a time.

        Returns
        -------
        Gate
            ``gate.reached.wait(timeout)`` returns once a request has been held; ``gate.release()`` lets every
            held and later request through.
        """
        if endpoint not in (SQLSEARCH, GETJPEG):
            raise StandinError(f"hold() takes {SQLSEARCH!r} or {GETJPEG!r}, got {endpoint!r}")
        if after < 0:
            raise StandinError(f"hold() needs after >= 0, got {after}")
        gate = Gate(after)
        with self._lock:
            self._gates[endpoint] = gate
        return gate

    def _pass_gate(self, endpoint: str) -> None:
        with self._lock:
            gate = self._gates.get(endpoint)
        if gate is not None:
            gate.pass_through()

    def reset_stats(self) -> None:
        with self._lock:
            self._counts.clear()
            self._times.clear()
            self._queries.clear()

    # --- request handling (called from handler threads) ---
    def _arrived(self, endpoint: str, sql: str | None = None) -> Faults:
        with self._lock:
            self._counts[endpoint]["requests"] += 1
            self._times[endpoint].append(time.monotonic())
            if sql is not None:
                self._queries.append(sql)
            return self._faults

    def _count(self, endpoint: str, key: str) -> None:
        with self._lock:
            self._counts[endpoint][key] += 1

    def _draw(self, probability: float) -> bool:
        if probability <= 0:
            return False
        with self._lock:
            return self._rng.random() < probability


class Gate:
    """Requests beyond the first ``after`` wait here until :meth:`release` (see :meth:`StandinServer.hold`)."""

    def __init__(self, after: int):
        self.after = after
        self.passed = 0
        self.held = 0
        self.reached = threading.Event()
        self._open = threading.Event()
        self._lock = threading.Lock()

    def pass_through(self) -> None:
        with self._lock:
            if self.passed < self.after or self._open.is_set():
                self.passed += 1
                return
            self.held += 1
        self.reached.set()
        self._open.wait()
        with self._lock:
            self.passed += 1

    def release(self) -> None:
        self._open.set()


def _handler_class(server: StandinServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as clients with a requests.Session expect
        # Headers and body leave in separate writes: with Nagle on, the body waits for the client's delayed ACK
        # (~40 ms per response on Linux), which would dwarf the injected latency in benchmarks.
        disable_nagle_algorithm = True
        server_version = "skyclass-standin/0.1"
        timeout = 60  # idle keep-alive connections end after this

        def log_message(self, fmt, *args):  # route http.server's access log to logging, quietly
            log.debug("%s " + fmt, self.address_string(), *args)

        def do_GET(self):
            self._dispatch(parse_qs(urlsplit(self.path).query, keep_blank_values=True))

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", errors="replace") if length else ""
            params = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
            params.update(parse_qs(body, keep_blank_values=True))
            self._dispatch(params)

        def _dispatch(self, params: dict[str, list[str]]):
            path = urlsplit(self.path).path.strip("/").lower()
            release, _, rest = path.partition("/")
            # Parameter names are case-insensitive on SkyServer (cmd, Cmd, CMD).
            flat = {k.lower(): v[-1] for k, v in params.items()}
            try:
                if release == server.release.lower() and rest == _SQLSEARCH_PATH:
                    self._sqlsearch(flat)
                elif release == server.release.lower() and rest == _GETJPEG_PATH:
                    self._getjpeg(flat)
                else:
                    server._arrived("other")
                    self._send("other", 404, f"Not found: {self.path} (this stand-in serves "
                               f"/{server.release}/SkyServerWS/SearchTools/SqlSearch and "
                               f"/{server.release}/SkyServerWS/ImgCutout/getjpeg)")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout is shorter than the injected latency)

        def _faulted(self, endpoint: str, faults: Faults) -> bool:
            """Apply latency and the HTTP-level faults; True when a fault response was sent."""
            if faults.latency_ms > 0:
                time.sleep(faults.latency_ms / 1000.0)
            if server._draw(faults.error_rate):
                status = 503 if server._draw(0.5) else 500
                self._send(endpoint, status, "Error: the server encountered an internal error (simulated)")
                return True
            if server._draw(faults.throttle_rate):
                self._send(endpoint, 429, "Too many requests: slow down (simulated)",
                           headers={"Retry-After": f"{faults.retry_after_s:g}"})
                return True
            if server._draw(faults.error_body_rate):
                server._count(endpoint, "error_body")
                self._send(endpoint, 200, _ERROR_PAGE, content_type="text/html; charset=utf-8")
                return True
            return False

        def _sqlsearch(self, params: dict[str, str]):
            sql = params.get("cmd", "")
            faults = server._arrived(SQLSEARCH, sql)
            server._pass_gate(SQLSEARCH)
            if self._faulted(SQLSEARCH, faults):
                return
            fmt = params.get("format", "csv").lower()
            if fmt not in ("csv", "json"):
                self._send(SQLSEARCH, 400, f"ERROR: format {fmt!r} is not supported by the stand-in (csv, json)")
                return
            if not sql.strip():
                self._send(SQLSEARCH, 400, "ERROR: the cmd parameter (the SQL query) is missing")
                return
            try:
                result = server.catalog.query(sql, server.row_cap)
            except StandinSQLError as err:
                # SkyServer's web service answers a failing query with HTTP 500 and the SQL error as text.
                self._send(SQLSEARCH, 500, f"ERROR: SQL error while executing the query: {err}")
                return
            if result.truncated:
                log.info("SqlSearch result truncated to the row cap (%d rows)", server.row_cap)
            if fmt == "json":
                rows = [dict(zip(result.columns, (_json_value(v) for v in row))) for row in result.rows]
                body = json.dumps([{"TableName": "Table1", "Rows": rows}], allow_nan=False)
                self._send(SQLSEARCH, 200, body, content_type="application/json; charset=utf-8")
            else:
                self._send(SQLSEARCH, 200, _csv_body(result.columns, result.rows),
                           content_type="text/plain; charset=utf-8")

        def _getjpeg(self, params: dict[str, str]):
            faults = server._arrived(GETJPEG)
            server._pass_gate(GETJPEG)
            if self._faulted(GETJPEG, faults):
                return
            try:
                ra = float(params["ra"])
                dec = float(params["dec"])
                scale = float(params.get("scale") or DEFAULT_SCALE_ARCSEC_PER_PX)
                width = int(float(params.get("width") or MIN_CUTOUT_PX))
                height = int(float(params.get("height") or MIN_CUTOUT_PX))
            except (KeyError, ValueError) as err:
                self._send(GETJPEG, 500, f"ERROR: getjpeg needs numeric ra, dec[, scale, width, height] ({err})")
                return
            if not (math.isfinite(ra) and math.isfinite(dec) and -90 <= dec <= 90 and math.isfinite(scale)
                    and scale > 0):
                self._send(GETJPEG, 500, f"ERROR: invalid field ra={ra} dec={dec} scale={scale}")
                return
            width = min(max(width, MIN_CUTOUT_PX), MAX_CUTOUT_PX)
            height = min(max(height, MIN_CUTOUT_PX), MAX_CUTOUT_PX)
            jpeg = render_field(server, ra % 360.0, dec, scale, width, height)
            if server._draw(faults.corrupt_rate):
                server._count(GETJPEG, "corrupt")
                jpeg = _corrupt(jpeg, server)
            self._send(GETJPEG, 200, jpeg, content_type="image/jpeg", headers={STANDIN_HEADER: STANDIN_RENDERED})

        def _send(self, endpoint: str, status: int, body: str | bytes, *, content_type="text/plain; charset=utf-8",
                  headers: dict | None = None):
            data = body.encode("utf-8") if isinstance(body, str) else body
            server._count(endpoint, str(status))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def render_field(server: StandinServer, ra_deg: float, dec_deg: float, scale_arcsec_per_px: float, width_px: int,
                 height_px: int) -> bytes:
    """JPEG of the field: the catalog objects within it rendered by render.render_cutout, blank sky elsewhere."""
    from skyclass.standin.render import SkyObject, render_cutout

    index = server.catalog.sky_index
    radius_deg = (scale_arcsec_per_px * math.hypot(width_px, height_px) / 2 + _FIELD_MARGIN_ARCSEC) / 3600.0
    objects = [SkyObject(int(index.objid[k]), float(index.ra[k]), float(index.dec[k]), str(index.cls[k]),
                         float(index.g[k]), float(index.r[k]), float(index.i[k]))
               for k in index.within(ra_deg, dec_deg, radius_deg)]
    return render_cutout(ra_deg, dec_deg, objects, scale_arcsec_per_px=scale_arcsec_per_px, width_px=width_px,
                         height_px=height_px)


def _corrupt(jpeg: bytes, server: StandinServer) -> bytes:
    # Half truncated (a download cut short), half with the entropy-coded data overwritten (bit rot).
    if server._draw(0.5):
        return jpeg[: max(2, len(jpeg) // 3)]
    middle = len(jpeg) // 2
    return jpeg[:20] + b"\x00" * (middle - 20) + jpeg[middle:]


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _csv_body(columns: Sequence[str], rows: Sequence[tuple]) -> str:
    # csv.writer writes floats with repr (exact round trip), None as an empty field, and quotes only when needed.
    buffer = io.StringIO()
    buffer.write("#Table1\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


# --- command line ---------------------------------------------------------------------------------------------------

def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``skyclass standin`` options to ``parser``."""
    parser.add_argument("--catalog", action="append", metavar="FILE",
                        help="catalog CSV to serve (repeatable); default: standin.catalogs of conf/local.yaml")
    parser.add_argument("--host", default=LOOPBACK, help="must be 127.0.0.1 (the stand-in is never exposed)")
    parser.add_argument("--port", type=int, default=None, help="port (default: standin.port of conf/local.yaml)")
    parser.add_argument("--release", default="dr17", help="data release path segment (default dr17)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay added to every request")
    parser.add_argument("--error-rate", type=float, default=0.0, help="probability of HTTP 500/503")
    parser.add_argument("--throttle-rate", type=float, default=0.0, help="probability of HTTP 429")
    parser.add_argument("--retry-after-s", type=float, default=1.0, help="Retry-After of the 429 answers")
    parser.add_argument("--error-body-rate", type=float, default=0.0,
                        help="probability of an error page with HTTP 200")
    parser.add_argument("--corrupt-rate", type=float, default=0.0, help="probability of a corrupt getjpeg JPEG")
    parser.add_argument("--row-cap", type=int, default=500_000, help="SqlSearch row cap (SkyServer: 500000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault generator")


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C (the ``skyclass standin`` command); returns the process exit code."""
    from skyclass.config import REPO_ROOT, ConfigError, load_config, resolve_path

    local_conf = REPO_ROOT / "conf" / "local.yaml"
    try:
        conf = load_config(local_conf if local_conf.exists() else None)
    except ConfigError as err:
        print(f"skyclass standin: configuration error: {err}", file=sys.stderr)
        return 2
    catalogs = args.catalog or [resolve_path(c) for c in conf.standin.catalogs]
    if not catalogs:
        print("skyclass standin: no catalog given; pass --catalog FILE (a SkyServer CSV export)", file=sys.stderr)
        return 2
    missing = [c for c in catalogs if not Path(c).is_file()]
    if missing:
        print(f"skyclass standin: catalog file {missing[0]} does not exist. The real SDSS exports are expected in "
              f"../shared/data/sdss/ beside the checkout ({REPO_ROOT.parent / 'shared' / 'data' / 'sdss'}); "
              "pass another file with --catalog FILE (repeatable).", file=sys.stderr)
        return 2
    try:
        faults = Faults(latency_ms=args.latency_ms, error_rate=args.error_rate, throttle_rate=args.throttle_rate,
                        retry_after_s=args.retry_after_s, error_body_rate=args.error_body_rate,
                        corrupt_rate=args.corrupt_rate, seed=args.seed)
        server = StandinServer(catalogs, host=args.host, port=conf.standin.port if args.port is None else args.port,
                               release=args.release, faults=faults, row_cap=args.row_cap)
        server.start()
    except (StandinError, ValueError) as err:
        print(f"skyclass standin: {err}", file=sys.stderr)
        return 2
    log.info("serving %s until Ctrl-C; e.g. %s/SkyServerWS/SearchTools/SqlSearch?cmd=SELECT+TOP+5+*+FROM+SpecObj"
             "&format=csv", server.url, server.url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping the stand-in")
    finally:
        server.stop()
    return 0
