"""The one SkyServer client: SqlSearch queries and raw requests (ImgCutout) with timeouts, retries, a rate limit
and error detection, plus SQL templates and value validation.

Everything that talks to SkyServer goes through :meth:`SkyServerClient.request`, which owns the
``requests.Session``, the per-request timeout, retries with exponential backoff and jitter on connection errors,
5xx and 429 (honouring Retry-After), the client-side rate limit, and the checks that turn error pages into
exceptions. Query builders (:func:`sql_search_request`, :func:`render_sql`) touch no network, so tests can check
the exact SQL and URL.

SkyServer documents a limit of 60 queries per minute per client. The limit here is per client object: a Spark
job that runs N tasks must give each task's client ``1/N`` of the job's budget (see
:meth:`SkyServerClient.from_config`).
"""
from __future__ import annotations

import email.utils
import io
import logging
import random
import re
import threading
import time
from decimal import Decimal
from importlib import resources
from typing import Any, Iterable, Mapping, Optional
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import requests

from skyclass.errors import SkyclassError

log = logging.getLogger(__name__)

SQLSEARCH_PATH = "SkyServerWS/SearchTools/SqlSearch"
GETJPEG_PATH = "SkyServerWS/ImgCutout/getjpeg"
DEFAULT_URL = "https://skyserver.sdss.org/dr17"
# Our SkyServer stand-in answers getjpeg with this header (value STANDIN_RENDERED): its images are rendered, not
# SDSS's. The downloader records a cutout's source from the answer itself, never from the URL it asked.
STANDIN_HEADER = "X-Skyclass-Standin"
STANDIN_RENDERED = "rendered"
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Phrases of SQL Server / SkyServer (and the stand-in) error texts that mean the query itself is wrong: retrying
# cannot help, so these fail at once.
_SQL_ERROR_RE = re.compile(
    r"syntax|invalid (column|object) name|no such (column|table)|could not be bound|conversion failed|"
    r"sql error|only select|not authorized|ambiguous column|must declare", re.IGNORECASE)
_QUERY_IN_MESSAGE_CHARS = 600


class SkyServerError(SkyclassError):
    """A SkyServer request failed; the message names what was asked (``what``)."""


class SkyServerQueryError(SkyServerError):
    """SkyServer rejected the SQL (syntax, unknown table or column): fix the query, retrying will not help."""


class SkyServerHTTPError(SkyServerError):
    """An HTTP status that is not retried (4xx except 429), or a retryable status that outlasted the retries."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class SkyServerResponseError(SkyServerError):
    """HTTP 200 whose body is not the expected result (an error page, or an unparsable table)."""


class SkyServerUnavailable(SkyServerError):
    """Connection errors or timeouts on every attempt."""


class SqlValueError(SkyclassError, ValueError):
    """A value meant for an SQL template is not of the allowed form (injection guard)."""


# --- SQL building (no network) ---------------------------------------------------------------------------------

IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
SDSS_CLASSES = ("GALAXY", "STAR", "QSO")


def sql_identifier(name: Any, allowed: Optional[Iterable[str]] = None) -> str:
    """``name`` if it is a plain SQL identifier (and, with ``allowed``, one of those, case-insensitively).

    Raises
    ------
    SqlValueError
        Not a string matching ``[A-Za-z_][A-Za-z0-9_]*``, or not in ``allowed``.
    """
    if not isinstance(name, str) or not IDENTIFIER_RE.match(name):
        raise SqlValueError(f"{name!r} is not a valid SQL column name (letters, digits and _ only, not starting "
                            "with a digit)")
    if allowed is not None and name.lower() not in {a.lower() for a in allowed}:
        raise SqlValueError(f"column {name!r} is not allowed here; allowed: {', '.join(sorted(allowed))}")
    return name


def sql_int(value: Any, *, minimum: int | None = None, maximum: int | None = None) -> str:
    """An integer literal (Python int or numpy integer or Decimal with no fraction; never bool, float or text).

    Raises
    ------
    SqlValueError
        Not an integer, or outside [minimum, maximum].
    """
    if isinstance(value, Decimal) and value == value.to_integral_value():
        value = int(value)
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SqlValueError(f"expected an integer for SQL, got {value!r} ({type(value).__name__})")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise SqlValueError(f"integer {value} is outside the allowed range [{minimum}, {maximum}]")
    return str(value)


def sql_float(value: Any) -> str:
    """A finite float literal (int or float; never bool or text), written exactly with repr.

    Raises
    ------
    SqlValueError
        Not a finite number.
    """
    if isinstance(value, np.floating | np.integer):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise SqlValueError(f"expected a finite number for SQL, got {value!r}")
    return repr(float(value))


def sql_class(value: Any) -> str:
    """A quoted SDSS class literal, from the fixed set GALAXY, STAR, QSO.

    Raises
    ------
    SqlValueError
        Any other value.
    """
    if value not in SDSS_CLASSES:
        raise SqlValueError(f"class must be one of {', '.join(SDSS_CLASSES)}, got {value!r}")
    return f"'{value}'"


def sql_template(name: str) -> str:
    """Text of a packaged SQL template ``lib/skyclass/sql/<name>.sql``.

    Raises
    ------
    FileNotFoundError
        No such template.
    """
    return resources.files("skyclass").joinpath("sql", f"{name}.sql").read_text(encoding="utf-8")


def render_sql(name: str, **literals: str) -> str:
    """Fill a template with literals that the caller has already validated (``sql_int``, ``sql_identifier``, ...).

    Placeholders are ``{name}``; comment lines (``--``) are dropped so the URL stays short.

    Raises
    ------
    SqlValueError
        A placeholder has no value, or a value is not a string produced by a validator.
    """
    for key, value in literals.items():
        if not isinstance(value, str):
            raise SqlValueError(f"SQL template {name}: value for {{{key}}} must be a validated literal string, "
                                f"got {type(value).__name__}")
    text = "\n".join(line for line in sql_template(name).splitlines() if not line.lstrip().startswith("--"))
    try:
        return text.format(**literals).strip()
    except KeyError as err:
        raise SqlValueError(f"SQL template {name} needs a value for {err}") from None


def sql_search_request(sql: str, fmt: str = "csv") -> tuple[str, dict[str, str]]:
    """Path (relative to the release URL) and query parameters of a SqlSearch request.

    Raises
    ------
    ValueError
        ``fmt`` is not csv or json.
    """
    if fmt not in ("csv", "json"):
        raise ValueError(f"format must be csv or json, got {fmt!r}")
    return SQLSEARCH_PATH, {"cmd": sql, "format": fmt}


def request_url(base_url: str, path: str, params: Mapping[str, Any]) -> str:
    """The full GET URL of a request (what :meth:`SkyServerClient.request` sends), without network."""
    return f"{base_url.rstrip('/')}/{path.lstrip('/')}?{urlencode(params)}"


def release_url(url: str, release: str | None = None) -> str:
    """``url`` with its last path segment replaced by ``release`` (e.g. dr17 → dr16); unchanged for None."""
    if release is None:
        return url.rstrip("/")
    if not re.match(r"^dr\d+$", release, re.IGNORECASE):
        raise ValueError(f"release must look like dr17, got {release!r}")
    base = url.rstrip("/")
    head, _, last = base.rpartition("/")
    return f"{head}/{release}" if re.match(r"^dr\d+$", last, re.IGNORECASE) else f"{base}/{release}"


# --- response parsing ------------------------------------------------------------------------------------------

def _short(sql: str) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= _QUERY_IN_MESSAGE_CHARS else flat[:_QUERY_IN_MESSAGE_CHARS] + " ..."


def parse_csv_result(text: str, what: str) -> pd.DataFrame:
    """SkyServer's CSV (``#Table1`` line, header, rows) → DataFrame with exact ids.

    Columns named ``specObjID`` (any case) become unsigned 64-bit (``uint64``, or pandas ``UInt64`` when a value is
    missing); other ``*objID`` columns become ``int64`` (``Int64`` with missing values). Ids are parsed from their
    text, never through float.

    Raises
    ------
    SkyServerResponseError
        The body is not a SkyServer table (an error page, an HTML page).
    """
    stripped = text.lstrip("\ufeff")
    first, _, rest = stripped.partition("\n")
    if not first.strip().startswith("#Table"):
        raise SkyServerResponseError(f"{what}: SkyServer answered with something that is not a result table: "
                                     f"{_excerpt(text)!r}")
    if not rest.strip():
        return pd.DataFrame()
    header = pd.read_csv(io.StringIO(rest), nrows=0).columns
    id_columns = [c for c in header if c.lower().endswith("objid")]
    try:
        frame = pd.read_csv(io.StringIO(rest), dtype={c: str for c in id_columns}, comment=None)
    except (pd.errors.ParserError, ValueError) as err:
        raise SkyServerResponseError(f"{what}: the result table is malformed ({err})") from None
    for column in id_columns:
        frame[column] = _exact_id_column(frame[column], column, what)
    return frame


def _exact_id_column(values: pd.Series, column: str, what: str) -> pd.Series:
    unsigned = column.lower() == "specobjid"
    ints = []
    for v in values.tolist():
        if v is None or (isinstance(v, float) and np.isnan(v)):
            ints.append(None)
            continue
        text = str(v).strip()
        if not (text.isdigit() or (not unsigned and text.startswith("-") and text[1:].isdigit())):
            raise SkyServerResponseError(f"{what}: column {column} holds {v!r}, not an integer")
        ints.append(int(text))
    has_missing = any(v is None for v in ints)
    if unsigned:
        return pd.Series(pd.array(ints, dtype="UInt64") if has_missing else np.array(ints, dtype=np.uint64),
                         index=values.index, name=column)
    return pd.Series(pd.array(ints, dtype="Int64") if has_missing else np.array(ints, dtype=np.int64),
                     index=values.index, name=column)


def _excerpt(text: str, chars: int = 300) -> str:
    flat = " ".join(re.sub(r"<[^>]+>", " ", text).split())
    return flat if len(flat) <= chars else flat[:chars] + " ..."


# --- the client ------------------------------------------------------------------------------------------------

class RateLimiter:
    """At most ``max_per_s`` events per second, evenly spaced; shared by the threads of one client."""

    def __init__(self, max_per_s: float):
        if not max_per_s > 0:
            raise ValueError(f"max_per_s must be > 0, got {max_per_s}")
        self.interval_s = 1.0 / max_per_s
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval_s
        if start > now:
            time.sleep(start - now)


class SkyServerClient:
    """SkyServer over HTTP: one ``requests.Session``, timeouts, retries, a rate limit, error detection.

    Parameters
    ----------
    url : str
        Base URL including the data release, e.g. ``https://skyserver.sdss.org/dr17`` or the stand-in's URL.
    timeout_s : float
        Connect and read timeout of each attempt.
    retries : int
        Further attempts after the first, on connection errors, timeouts, 5xx, 429 and HTTP-200 error pages.
    backoff_s, max_backoff_s : float
        Wait before retry k is ``min(max_backoff_s, backoff_s * 2**k)`` times a random factor in [0.5, 1]
        (jitter, so parallel tasks do not retry in lock-step); a 429's Retry-After is honoured if longer.
    max_requests_per_s : float
        Client-side rate limit, counting every attempt.
    user_agent : str
        Sent with every request so SkyServer's operators can tell who is calling.
    seed : int, optional
        Seed of the jitter generator (tests).
    pool_size : int, optional
        Connections kept open per host; give at least the number of threads sharing this client, or requests
        (default 10) discards the surplus connections and every request pays a new TCP handshake.
    """

    def __init__(self, url: str = DEFAULT_URL, *, timeout_s: float = 60.0, retries: int = 5, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0, max_requests_per_s: float = 1.0,
                 user_agent: str = "skyclass/0.1", seed: int | None = None, pool_size: int | None = None):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"SkyServer url must start with http:// or https://, got {url!r}")
        for name, value in (("timeout_s", timeout_s), ("max_requests_per_s", max_requests_per_s)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if retries < 0 or backoff_s < 0 or max_backoff_s < 0:
            raise ValueError("retries, backoff_s and max_backoff_s must be >= 0")
        self.url = url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.user_agent = user_agent
        self._limiter = RateLimiter(max_requests_per_s)
        self._rng = random.Random(seed)
        self._session = requests.Session()
        self._session.headers["User-Agent"] = user_agent
        if pool_size is not None:
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=int(pool_size))
            self._session.mount("http://", adapter)
            self._session.mount("https://", adapter)
        self.requests_sent = 0  # attempts, including retries
        self._count_lock = threading.Lock()

    @classmethod
    def from_config(cls, conf, max_requests_per_s: float | None = None, **overrides) -> "SkyServerClient":
        """A client from ``conf.skyserver`` (a SkyServerConfig).

        Parameters
        ----------
        conf : SkyServerConfig
        max_requests_per_s : float, optional
            This client's share of the job's rate (``conf.max_queries_per_s / tasks`` in a Spark task);
            default: all of ``conf.max_queries_per_s``.
        """
        return cls(conf.url, timeout_s=conf.timeout_s, retries=conf.retries, backoff_s=conf.backoff_s,
                   max_backoff_s=conf.max_backoff_s,
                   max_requests_per_s=max_requests_per_s or conf.max_queries_per_s,
                   user_agent=conf.user_agent, **overrides)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "SkyServerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, path: str, params: Mapping[str, Any], *, what: str) -> requests.Response:
        """GET ``<url>/<path>?params`` with rate limit, timeout, retries and error detection.

        Parameters
        ----------
        path : str
            Relative to the release URL, e.g. ``SkyServerWS/ImgCutout/getjpeg``.
        params : mapping
            Query parameters.
        what : str
            What is being asked, for error messages (e.g. the SQL, or "cutout of objID 123").

        Returns
        -------
        requests.Response
            A 2xx response (its body is not inspected here except for SQL error texts, see :meth:`sql`).

        Raises
        ------
        SkyServerQueryError
            The body says the SQL is wrong (any status): not retried.
        SkyServerHTTPError
            4xx other than 429 (not retried), or 5xx/429 on every attempt.
        SkyServerUnavailable
            Connection errors or timeouts on every attempt.
        """
        url = f"{self.url}/{path.lstrip('/')}"
        attempts = self.retries + 1
        last_problem = ""
        for attempt in range(attempts):
            self._limiter.wait()
            with self._count_lock:  # the client may serve a thread pool (cutout downloads)
                self.requests_sent += 1
            retry_after = None
            try:
                response = self._session.get(url, params=params, timeout=self.timeout_s)
            except requests.Timeout:
                last_problem = f"no answer within {self.timeout_s:g} s"
            except requests.ConnectionError as err:
                last_problem = f"connection failed ({_reason(err)})"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return response
                body = response.text
                if _SQL_ERROR_RE.search(body) and status != 429:
                    raise SkyServerQueryError(f"SkyServer rejected the request (HTTP {status}): {_excerpt(body)} — "
                                              f"{what}")
                if status not in _RETRY_STATUSES:
                    raise SkyServerHTTPError(f"SkyServer answered HTTP {status} ({_excerpt(body, 200)}) for {what}; "
                                             f"check skyserver.url ({self.url})", status)
                last_problem = f"HTTP {status}"
                if status == 429:
                    retry_after = _retry_after_s(response.headers.get("Retry-After"))
            if attempt + 1 < attempts:
                delay = self._backoff(attempt, retry_after)
                log.warning("SkyServer %s for %s; retry %d/%d in %.2f s", last_problem, _short(what), attempt + 1,
                            self.retries, delay)
                time.sleep(delay)
        message = f"SkyServer failed {attempts} times (last: {last_problem}) for {what}"
        if last_problem.startswith("HTTP"):
            raise SkyServerHTTPError(message, int(last_problem.split()[1]))
        raise SkyServerUnavailable(message + f"; is {self.url} reachable?")

    def _backoff(self, attempt: int, retry_after_s: float | None) -> float:
        delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * self._rng.uniform(0.5, 1.0)
        if retry_after_s is not None:
            # The server said when to come back: never earlier than that.
            delay = max(delay, retry_after_s)
        return delay

    def sql(self, sql: str, *, what: str | None = None) -> pd.DataFrame:
        """Run a SqlSearch query and parse its CSV answer (exact ids, see :func:`parse_csv_result`).

        An HTTP-200 answer that is not a result table (SkyServer's error page) is retried like a 5xx, and raises
        :class:`SkyServerResponseError` naming the query when it persists.

        Raises
        ------
        SkyServerQueryError, SkyServerHTTPError, SkyServerUnavailable, SkyServerResponseError
        """
        what = what or f"query: {_short(sql)}"
        path, params = sql_search_request(sql, "csv")
        attempts = self.retries + 1
        for attempt in range(attempts):
            response = self.request(path, params, what=what)
            text = response.text
            if _SQL_ERROR_RE.search(text[:2000]) and not text.lstrip().startswith("#Table"):
                raise SkyServerQueryError(f"SkyServer rejected the query: {_excerpt(text)} — {what}")
            try:
                return parse_csv_result(text, what)
            except SkyServerResponseError:
                if attempt + 1 == attempts:
                    raise
                delay = self._backoff(attempt, None)
                log.warning("SkyServer returned an error page for %s; retry %d/%d in %.2f s", _short(what),
                            attempt + 1, self.retries, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises


def _reason(err: Exception) -> str:
    text = str(err)
    return text if len(text) < 200 else text[:200] + "..."


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: a number (fractions accepted) or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())

