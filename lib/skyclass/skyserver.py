"""The one SkyServer client: SqlSearch queries and raw requests (ImgCutout) with timeouts, retries, a rate limit
and error detection, plus SQL templates and value validation.

Everything that talks to SkyServer goes through one retry loop (:meth:`SkyServerClient.fetch`, and
:meth:`~SkyServerClient.request` and :meth:`~SkyServerClient.sql` on top of it), which owns the
``requests.Session``, the per-request timeout, the client-side rate limit, and the retries: connection errors,
timeouts, 5xx, 429 (honouring Retry-After) and answers that a caller's check finds transiently wrong (an error
page served with HTTP 200, a corrupt image) all draw on ONE budget of ``retries`` further attempts with one
exponential backoff with jitter. Answers that retrying cannot fix (SQL errors, 4xx) fail at once. Query builders
(:func:`sql_search_request`, :func:`render_sql`) touch no network, so tests can check the exact SQL and URL.

SkyServer documents a limit of 60 queries per minute per client. The limit here is per client object, whatever
number of threads use it (each thread has its own ``requests.Session``; they share the limiter): a Spark job
that runs N tasks must give each task's client ``1/N`` of the job's budget (see
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
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import requests

from skyclass.config import CLASSES
from skyclass.errors import SkyclassError

log = logging.getLogger(__name__)
T = TypeVar("T")

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
    """A SkyServer request failed; the message names what was asked (``what``).

    ``attempts`` is the number of HTTP requests the call sent before giving up (set by the retry loop).
    """

    attempts: int = 1


class SkyServerQueryError(SkyServerError):
    """SkyServer rejected the SQL (syntax, unknown table or column): fix the query, retrying will not help."""


class SkyServerHTTPError(SkyServerError):
    """An HTTP status that is not retried (4xx except 429), or a retryable status that outlasted the retries."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class SkyServerResponseError(SkyServerError):
    """HTTP 200 whose body is not the expected result (an error page, an unparsable table, a bad image) on every
    attempt; ``kind`` is the category of the last one (``error_page``, ``corrupt_jpeg``, ...)."""

    def __init__(self, message: str, kind: str = "bad_answer"):
        super().__init__(message)
        self.kind = kind


class TransientAnswer(SkyServerError):
    """Raised by a response check (see :meth:`SkyServerClient.fetch`): this HTTP-200 answer is a passing failure
    (an error page, a truncated body), so the request is tried again within the same attempt budget.

    Parameters
    ----------
    kind : str
        Short category for counts and failure reasons, e.g. ``error_page``, ``corrupt_jpeg``.
    message : str
        What was wrong with the answer.
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class SkyServerUnavailable(SkyServerError):
    """Connection errors or timeouts on every attempt."""


class SqlValueError(SkyclassError, ValueError):
    """A value meant for an SQL template is not of the allowed form (injection guard)."""


# --- SQL building (no network) ---------------------------------------------------------------------------------

IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


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
    if value not in CLASSES:
        raise SqlValueError(f"class must be one of {', '.join(CLASSES)}, got {value!r}")
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


def sql_answer(text: str, what: str) -> pd.DataFrame:
    """A SqlSearch HTTP-200 body as a table, telling a wrong query (fail now) from a passing failure (retry).

    Parameters
    ----------
    text : str
        The body.
    what : str
        What was asked, for messages.

    Returns
    -------
    pandas.DataFrame
        See :func:`parse_csv_result`.

    Raises
    ------
    SkyServerQueryError
        Not a table, and the text says the SQL is wrong (syntax, unknown column...): retrying cannot help.
    TransientAnswer
        Not a result table otherwise (SkyServer's error page when its back end fails), or a table that does not
        parse (a cut-off body): worth another attempt.
    """
    if _SQL_ERROR_RE.search(text[:2000]) and not text.lstrip("\ufeff").lstrip().startswith("#Table"):
        raise SkyServerQueryError(f"SkyServer rejected the query: {_excerpt(text)} — {what}")
    try:
        return parse_csv_result(text, what)
    except SkyServerResponseError as err:
        raise TransientAnswer("error_page", str(err)) from None


# --- the client ------------------------------------------------------------------------------------------------

class RateLimiter:
    """At most ``max_per_s`` events per second, evenly spaced; shared by the threads of one client.

    Each caller of :meth:`wait` reserves the next free slot under a lock, then sleeps until it.

    Parameters
    ----------
    max_per_s : float
        The limit.
    clock, sleep : callable, optional
        ``time.monotonic`` and ``time.sleep``; tests give a clock that stands still and a sleep that records.

    Raises
    ------
    ValueError
        ``max_per_s`` is not positive.
    """

    def __init__(self, max_per_s: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if not max_per_s > 0:
            raise ValueError(f"max_per_s must be > 0, got {max_per_s}")
        self.interval_s = 1.0 / max_per_s
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval_s
        if start > now:
            self._sleep(start - now)


_session_lock = threading.Lock()
_sessions_opened = 0
_sessions_closed = 0


def session_counts() -> tuple[int, int]:
    """(opened, closed): ``requests.Session`` objects of all SkyServer clients in this process so far.

    A client opens one per thread that uses it and closes them all in :meth:`SkyServerClient.close`, so the two
    are equal when no client is open (an observable for tests and for leak checks).
    """
    with _session_lock:
        return _sessions_opened, _sessions_closed


def _count_sessions(opened: int = 0, closed: int = 0) -> None:
    global _sessions_opened, _sessions_closed
    with _session_lock:
        _sessions_opened += opened
        _sessions_closed += closed


class SkyServerClient:
    """SkyServer over HTTP: timeouts, retries, a rate limit, error detection; safe to share between threads.

    ``requests.Session`` is not thread-safe, so each thread that uses the client gets its own session (see
    :attr:`session`); what the threads share is the rate limiter (locked), so the limit holds for all of them
    together, and the request counter (locked). :meth:`close` closes every thread's session.

    Parameters
    ----------
    url : str
        Base URL including the data release, e.g. ``https://skyserver.sdss.org/dr17`` or the stand-in's URL.
    timeout_s : float
        Connect and read timeout of each attempt.
    retries : int
        Further attempts after the first, one budget for every kind of passing failure together: connection
        errors, timeouts, 5xx, 429 and HTTP-200 answers a check finds transiently wrong.
    backoff_s, max_backoff_s : float
        Wait before retry k is ``min(max_backoff_s, backoff_s * 2**k)`` times a random factor in [0.5, 1]
        (jitter, so parallel tasks do not retry in lock-step); a 429's Retry-After is honoured if longer.
    max_requests_per_s : float
        Client-side rate limit, counting every attempt.
    user_agent : str
        Sent with every request so SkyServer's operators can tell who is calling.
    seed : int, optional
        Seed of the jitter generator (tests).
    sleep : callable, optional
        Waits between attempts (``time.sleep``; tests inject one that records the delays and returns at once).
    limiter : RateLimiter, optional
        The rate limiter to use instead of one at ``max_requests_per_s`` (tests give one with an injected clock).
    """

    def __init__(self, url: str = DEFAULT_URL, *, timeout_s: float = 60.0, retries: int = 5, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0, max_requests_per_s: float = 1.0,
                 user_agent: str = "skyclass/0.1", seed: int | None = None,
                 sleep: Callable[[float], None] = time.sleep, limiter: Optional[RateLimiter] = None):
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
        self._limiter = limiter or RateLimiter(max_requests_per_s)
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._sleep = sleep
        self._local = threading.local()  # .session: the calling thread's requests.Session
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
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

    @property
    def session(self) -> requests.Session:
        """The calling thread's ``requests.Session``, opened on its first request; never shared with another
        thread (a Session's connection pool and cookie jar are not thread-safe)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = self.user_agent
            with self._sessions_lock:
                self._sessions.append(session)
            _count_sessions(opened=1)
            self._local.session = session
        return session

    @property
    def sessions_opened(self) -> int:
        """Sessions this client has opened so far: one per thread that sent a request."""
        with self._sessions_lock:
            return len(self._sessions)

    def close(self) -> None:
        """Close every thread's session (call once the threads are done, e.g. after their pool has shut down)."""
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        _count_sessions(closed=len(sessions))
        self._local = threading.local()  # a later request opens (and counts) a new session

    def __enter__(self) -> "SkyServerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def fetch(self, path: str, params: Mapping[str, Any], *, what: str,
              check: Optional[Callable[[requests.Response], T]] = None) -> tuple[T, int]:
        """GET ``<url>/<path>?params`` in the one retry loop: rate limit, timeout, retries, error detection.

        Every passing failure draws on the same budget of ``retries`` further attempts with the same backoff:
        connection errors and timeouts, HTTP 5xx and 429 (waiting at least its Retry-After), and 2xx answers that
        ``check`` rejects with :class:`TransientAnswer`. So a call sends at most ``retries + 1`` requests, however
        the kinds of failure alternate.

        Parameters
        ----------
        path : str
            Relative to the release URL, e.g. ``SkyServerWS/ImgCutout/getjpeg``.
        params : mapping
            Query parameters.
        what : str
            What is being asked, for error messages (e.g. the SQL, or "cutout of objID 123").
        check : callable, optional
            Called with each 2xx response; returns the value of the call, raises :class:`TransientAnswer` to try
            again, or any :class:`SkyServerError` to fail at once. None: the response itself is the value.

        Returns
        -------
        (value, attempts)
            What ``check`` returned (or the response) and the number of requests sent for it.

        Raises
        ------
        SkyServerQueryError
            The body says the SQL is wrong (any status): not retried.
        SkyServerHTTPError
            4xx other than 429 (not retried), or 5xx/429 on the last attempt.
        SkyServerUnavailable
            A connection error or timeout on the last attempt.
        SkyServerResponseError
            ``check`` found the last answer transiently wrong (``kind`` says how).
        """
        url = f"{self.url}/{path.lstrip('/')}"
        attempts = self.retries + 1
        seen: dict[str, int] = {}  # problem category -> times, for the final message
        for attempt in range(1, attempts + 1):
            self._limiter.wait()
            with self._count_lock:  # the client may serve a thread pool (cutout downloads)
                self.requests_sent += 1
            retry_after = None
            transient: Optional[TransientAnswer] = None
            status = None
            try:
                response = self.session.get(url, params=params, timeout=self.timeout_s)
            except requests.Timeout:
                problem, category = f"no answer within {self.timeout_s:g} s", "timeout"
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
                problem, category = f"connection failed ({_reason(err)})", "connection error"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    if check is None:
                        return response, attempt
                    try:
                        return check(response), attempt
                    except TransientAnswer as err:
                        transient = err
                        problem, category = f"{err.kind} ({err})", err.kind.replace("_", " ")
                    except SkyServerError as err:
                        err.attempts = attempt
                        raise
                else:
                    body = response.text
                    if _SQL_ERROR_RE.search(body) and status != 429:
                        raise _with_attempts(SkyServerQueryError(
                            f"SkyServer rejected the request (HTTP {status}): {_excerpt(body)} — {what}"), attempt)
                    if status not in _RETRY_STATUSES:
                        raise _with_attempts(SkyServerHTTPError(
                            f"SkyServer answered HTTP {status} ({_excerpt(body, 200)}) for {what}; check "
                            f"skyserver.url ({self.url})", status), attempt)
                    problem = category = f"HTTP {status}"
                    if status == 429:
                        retry_after = _retry_after_s(response.headers.get("Retry-After"))
            seen[category] = seen.get(category, 0) + 1
            if attempt == attempts:
                break
            delay = self._backoff(attempt - 1, retry_after)
            log.warning("SkyServer %s for %s; retry %d/%d in %.2f s", problem, _short(what), attempt, self.retries,
                        delay)
            self._sleep(delay)
        summary = ", ".join(f"{n} x {c}" for c, n in seen.items())
        message = f"SkyServer failed {attempts} times ({summary}; last: {problem}) for {what}"
        if transient is not None:
            raise _with_attempts(SkyServerResponseError(message, transient.kind), attempts)
        if status is not None:
            raise _with_attempts(SkyServerHTTPError(message, status), attempts)
        raise _with_attempts(SkyServerUnavailable(message + f"; is {self.url} reachable?"), attempts)

    def request(self, path: str, params: Mapping[str, Any], *, what: str) -> requests.Response:
        """GET ``<url>/<path>?params`` in the retry loop (see :meth:`fetch`), without a check of the body.

        Returns
        -------
        requests.Response
            A 2xx response.

        Raises
        ------
        SkyServerQueryError, SkyServerHTTPError, SkyServerUnavailable
            As :meth:`fetch`.
        """
        return self.fetch(path, params, what=what)[0]

    def _backoff(self, retry: int, retry_after_s: float | None) -> float:
        with self._rng_lock:  # random.Random is shared by the client's threads
            jitter = self._rng.uniform(0.5, 1.0)
        delay = min(self.max_backoff_s, self.backoff_s * 2**retry) * jitter
        if retry_after_s is not None:
            # The server said when to come back: never earlier than that.
            delay = max(delay, retry_after_s)
        return delay

    def sql(self, sql: str, *, what: str | None = None) -> pd.DataFrame:
        """Run a SqlSearch query and parse its CSV answer (exact ids, see :func:`parse_csv_result`).

        An HTTP-200 answer that is not a result table (SkyServer's error page) is retried in the same loop and
        budget as a 5xx (see :func:`sql_answer`), and raises :class:`SkyServerResponseError` naming the query when
        it is still there on the last attempt.

        Raises
        ------
        SkyServerQueryError, SkyServerHTTPError, SkyServerUnavailable, SkyServerResponseError
        """
        what = what or f"query: {_short(sql)}"
        path, params = sql_search_request(sql, "csv")
        return self.fetch(path, params, what=what, check=lambda response: sql_answer(response.text, what))[0]


def _with_attempts(err: SkyServerError, attempts: int) -> SkyServerError:
    err.attempts = attempts
    return err


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

