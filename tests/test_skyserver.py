"""The SkyServer client against the stand-in on 127.0.0.1: parsing, retries, rate limit, error detection, SQL
builders and value validation."""
from __future__ import annotations

import threading
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from catalog_fixture import make_labelled
from clocks import FrozenClock, SteppingClock
from skyclass.config import SkyServerConfig
from skyclass.skyserver import (RateLimiter, SkyServerClient, SkyServerError, SkyServerHTTPError,
                                SkyServerQueryError, SkyServerResponseError, SkyServerUnavailable, SqlValueError,
                                TransientAnswer, parse_csv_result, release_url, render_sql, request_url,
                                session_counts, sql_answer, sql_class, sql_float, sql_identifier, sql_int,
                                sql_search_request)
from skyclass.standin.server import Faults


def _client(url, **kw):
    settings = dict(timeout_s=5, retries=3, backoff_s=0.01, max_backoff_s=0.05, max_requests_per_s=1000, seed=0)
    settings.update(kw)
    return SkyServerClient(url, **settings)


def test_sql_search_request_and_url_without_network():
    path, params = sql_search_request("SELECT TOP 1 objID FROM PhotoObj")
    assert path == "SkyServerWS/SearchTools/SqlSearch"
    assert params == {"cmd": "SELECT TOP 1 objID FROM PhotoObj", "format": "csv"}
    url = request_url("https://skyserver.sdss.org/dr17/", path, params)
    assert url == ("https://skyserver.sdss.org/dr17/SkyServerWS/SearchTools/SqlSearch?"
                   "cmd=SELECT+TOP+1+objID+FROM+PhotoObj&format=csv")
    assert parse_qs(urlsplit(url).query)["cmd"] == ["SELECT TOP 1 objID FROM PhotoObj"]
    assert release_url("https://skyserver.sdss.org/dr17", "dr16") == "https://skyserver.sdss.org/dr16"
    with pytest.raises(ValueError):
        sql_search_request("SELECT 1", fmt="xml")


def test_catalog_template_renders_exact_ids():
    sql = render_sql("catalog_page", top=sql_int(5), photo_columns="p.ra, p.u",
                     after_specobjid=sql_int(2**63 + 7), range_end=sql_int(2**64 - 1))
    assert "SELECT TOP 5" in sql
    assert "WHERE s.specObjID > 9223372036854775815 AND s.specObjID <= 18446744073709551615" in sql
    assert sql.endswith("ORDER BY s.specObjID")
    assert "--" not in sql  # comments dropped


@pytest.mark.parametrize("bad", ["1; DROP TABLE SpecObj", 1.5, True, "12", None, Decimal("1.5")])
def test_sql_int_rejects_non_integers(bad):
    with pytest.raises(SqlValueError):
        sql_int(bad)


def test_sql_value_validators():
    assert sql_int(np.uint64(2**64 - 1)) == "18446744073709551615"
    assert sql_int(Decimal(12)) == "12"
    with pytest.raises(SqlValueError):
        sql_int(-1, minimum=0)
    assert sql_float(230.1) == "230.1"
    for bad in ("230.1 OR 1=1", float("nan"), False):
        with pytest.raises(SqlValueError):
            sql_float(bad)
    assert sql_class("QSO") == "'QSO'"
    with pytest.raises(SqlValueError):
        sql_class("QSO' OR '1'='1")
    assert sql_identifier("psfMag_r") == "psfMag_r"
    for bad in ("r, (SELECT 1)", "1r", "r--", "r;", ""):
        with pytest.raises(SqlValueError):
            sql_identifier(bad)
    with pytest.raises(SqlValueError, match="not allowed"):
        sql_identifier("petroRad_r", allowed=("u", "g"))
    with pytest.raises(SqlValueError):
        render_sql("catalog_page", top=5, photo_columns="p.ra", after_specobjid="0", range_end="1")


def test_parse_csv_keeps_ids_exact():
    text = "#Table1\nobjID,specObjID,ra\n1237645000000000001,18446744073709551615,1.5\n2,9223372036854775808,2\n"
    frame = parse_csv_result(text, "test")
    assert frame["objID"].dtype == np.int64 and frame["specObjID"].dtype == np.uint64
    assert [int(v) for v in frame["specObjID"]] == [2**64 - 1, 2**63]
    assert int(frame["objID"][0]) == 1237645000000000001
    with pytest.raises(SkyServerResponseError):
        parse_csv_result("<html>Server Error</html>", "test")


def test_sql_round_trips_specobjid_above_2_63(standin_factory):
    frame = make_labelled(200, seed=2)
    server = standin_factory([frame])
    with _client(server.url) as client:
        got = client.sql("SELECT specObjID, bestObjID FROM SpecObj ORDER BY specObjID")
    assert [int(v) for v in got["specObjID"]] == sorted(int(v) for v in frame["specobjid"])
    assert max(int(v) for v in got["specObjID"]) > 2**63


def test_sql_error_raises_query_error_naming_the_query(standin):
    with _client(standin.url) as client, pytest.raises(SkyServerQueryError, match="nosuchcol.*query: SELECT TOP 1"):
        client.sql("SELECT TOP 1 nosuchcol FROM SpecObj")
    assert standin.stats()["sqlsearch"]["requests"] == 1  # a bad query is not retried


def test_error_page_with_http_200_raises_naming_the_query(standin):
    standin.faults = Faults(error_body_rate=1.0)
    with _client(standin.url, retries=1) as client, pytest.raises(SkyServerResponseError, match="SELECT TOP 2"):
        client.sql("SELECT TOP 2 objID FROM PhotoObj")


def test_retries_5xx_and_429_then_succeeds(standin):
    standin.faults = Faults(error_rate=0.4, throttle_rate=0.3, retry_after_s=0.05, seed=3)
    with _client(standin.url, retries=8) as client:
        for _ in range(5):
            assert len(client.sql("SELECT TOP 3 objID FROM PhotoObj")) == 3
    stats = standin.stats()["sqlsearch"]
    assert stats.get("429", 0) + stats.get("500", 0) + stats.get("503", 0) > 0
    assert stats["200"] == 5


def test_429_retry_after_is_honoured(standin):
    standin.faults = Faults(throttle_rate=1.0, retry_after_s=0.4)
    with _client(standin.url, retries=1) as client, pytest.raises(SkyServerHTTPError, match="HTTP 429"):
        client.sql("SELECT TOP 1 objID FROM PhotoObj")
    first, second = standin.request_times("sqlsearch")
    assert second - first >= 0.4  # backoff alone would be <= 0.05 s


def test_timeouts_are_retried_until_the_server_recovers(standin):
    # The stand-in answers only after 5 s, far beyond the 0.5 s timeout, until the client's first backoff wait
    # (an injected sleep, so nobody waits for real) makes it answer at once again.
    standin.faults = Faults(latency_ms=5000)
    sleep = Backoffs(then=lambda n: setattr(standin, "faults", Faults()))
    with _client(standin.url, timeout_s=0.5, retries=6, sleep=sleep) as client:
        assert len(client.sql("SELECT TOP 2 objID FROM PhotoObj")) == 2
        # At least the first attempt timed out and was retried; each retry waited its backoff first.
        assert client.requests_sent >= 2 and len(sleep.delays) == client.requests_sent - 1
    assert standin.stats()["sqlsearch"]["requests"] == client.requests_sent


def test_timeouts_on_every_attempt_raise_unavailable(standin):
    standin.faults = Faults(latency_ms=500)
    with _client(standin.url, timeout_s=0.1, retries=1) as client, \
            pytest.raises(SkyServerUnavailable, match="within 0.1 s.*SELECT TOP 1"):
        client.sql("SELECT TOP 1 objID FROM PhotoObj")


def test_404_is_not_retried(standin):
    with _client(standin.url.replace("/dr17", "/dr99")) as client, pytest.raises(SkyServerHTTPError, match="404"):
        client.sql("SELECT TOP 1 objID FROM PhotoObj")
    assert standin.stats()["other"]["requests"] == 1


def test_connection_refused_raises_unavailable():
    with _client("http://127.0.0.1:9/dr17", retries=1) as client, pytest.raises(SkyServerUnavailable):
        client.sql("SELECT 1")


def test_rate_limit_spaces_requests(standin):
    clock = SteppingClock()
    sent_at = []
    with _client(standin.url, limiter=RateLimiter(20, clock=clock.now, sleep=clock.sleep)) as client:
        for _ in range(8):
            client.sql("SELECT TOP 1 objID FROM PhotoObj")
            sent_at.append(clock.t)
        clock.t += 1.0  # idle for a second: no burst of banked slots afterwards
        for _ in range(3):
            client.sql("SELECT TOP 1 objID FROM PhotoObj")
            sent_at.append(clock.t)
    assert standin.stats()["sqlsearch"]["requests"] == 11
    gaps = np.diff(sent_at)
    np.testing.assert_allclose(gaps[:7], 0.05)  # 1/20 s apart, no closer
    assert gaps[7] == pytest.approx(1.0)  # the first after the pause goes at once ...
    np.testing.assert_allclose(gaps[8:], 0.05)  # ... and the next ones are spaced again
    assert clock.waits == pytest.approx([0.05] * 9)


def test_rate_limit_holds_across_threads(standin):
    clock = FrozenClock()
    with _client(standin.url, limiter=RateLimiter(25, clock=clock.now, sleep=clock.sleep)) as client:
        workers = [threading.Thread(target=lambda: [client.sql("SELECT TOP 1 objID FROM PhotoObj")
                                                    for _ in range(3)]) for _ in range(3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert len(standin.request_times("sqlsearch")) == 9
    # The clock stands still, so each wait is the slot the limiter reserved: nine distinct slots 1/25 s apart,
    # shared by the three threads (one limiter each would give three slots at 0, three at 0.04, ...).
    assert sorted(clock.waits) == pytest.approx([k * 0.04 for k in range(1, 9)])


def test_from_config_divides_the_rate():
    conf = SkyServerConfig(url="http://127.0.0.1:1/dr17", max_queries_per_s=1.0)
    client = SkyServerClient.from_config(conf, max_requests_per_s=conf.max_queries_per_s / 4)
    assert client._limiter.interval_s == pytest.approx(4.0)
    assert SkyServerClient.from_config(conf)._limiter.interval_s == pytest.approx(1.0)


# --- one retry loop, one attempt budget ---------------------------------------------------------------------------

class Backoffs:
    """An injected sleep: records each wait and returns at once; ``then`` runs during each wait (it changes what
    the stand-in serves next)."""

    def __init__(self, then=None):
        self.delays = []
        self.then = then

    def __call__(self, seconds):
        self.delays.append(seconds)
        if self.then is not None:
            self.then(len(self.delays))


def test_alternating_5xx_and_error_pages_share_one_attempt_budget(standin):
    # The stand-in answers 5xx, then an error page with HTTP 200, then 5xx, ... (switched during each backoff).
    server_error, error_page = Faults(error_rate=1.0), Faults(error_body_rate=1.0)
    standin.faults = server_error
    sleep = Backoffs(then=lambda n: setattr(standin, "faults", error_page if n % 2 else server_error))
    with _client(standin.url, retries=6, sleep=sleep) as client, \
            pytest.raises(SkyServerHTTPError, match=r"failed 7 times \(4 x HTTP 50\d.*3 x error page") as caught:
        client.sql("SELECT TOP 1 objID FROM PhotoObj")
    stats = standin.stats()["sqlsearch"]
    assert stats["requests"] == 7  # retries + 1 in all, not (retries + 1) per kind of failure
    assert stats["error_body"] == 3 and stats.get("500", 0) + stats.get("503", 0) == 4
    assert len(sleep.delays) == 6 and caught.value.attempts == 7


def test_every_kind_of_failure_draws_on_the_same_budget(standin):
    # Every answer is a failure of one kind or another (5xx, 429, error page), mixed at random.
    standin.faults = Faults(error_rate=0.3, throttle_rate=0.3, retry_after_s=0.0, error_body_rate=1.0, seed=4)
    sleep = Backoffs()
    with _client(standin.url, retries=6, sleep=sleep) as client, pytest.raises(SkyServerError):
        client.sql("SELECT TOP 1 objID FROM PhotoObj")
    stats = standin.stats()["sqlsearch"]
    assert stats["requests"] == 7 and len(sleep.delays) == 6
    assert stats.get("429", 0) > 0 and stats["error_body"] > 0 and stats.get("500", 0) + stats.get("503", 0) > 0


def test_an_error_page_is_retried_and_the_next_answer_used(standin):
    standin.faults = Faults(error_body_rate=1.0)
    sleep = Backoffs(then=lambda n: setattr(standin, "faults", Faults()))
    with _client(standin.url, retries=6, sleep=sleep) as client:
        assert len(client.sql("SELECT TOP 2 objID FROM PhotoObj")) == 2
    assert standin.stats()["sqlsearch"]["requests"] == 2 and len(sleep.delays) == 1


def test_retry_after_is_waited_through_the_injected_sleep(standin):
    standin.faults = Faults(throttle_rate=1.0, retry_after_s=30)
    sleep = Backoffs()
    with _client(standin.url, retries=2, sleep=sleep) as client, pytest.raises(SkyServerHTTPError, match="429"):
        client.sql("SELECT TOP 1 objID FROM PhotoObj")
    assert sleep.delays == [30.0, 30.0]  # backoff alone would be <= 0.05 s; and nobody waited 60 s for real


def test_sql_answers_tell_a_wrong_query_from_a_passing_failure():
    assert list(sql_answer("#Table1\nobjID\n5\n", "q")["objID"]) == [5]
    with pytest.raises(SkyServerQueryError, match="Incorrect syntax near 'FORM'.*q1"):
        sql_answer("Error: Incorrect syntax near 'FORM'.", "q1")  # a syntax error served with HTTP 200
    with pytest.raises(TransientAnswer) as caught:
        sql_answer("<html><h1>Server Error in '/' Application.</h1></html>", "q2")
    assert caught.value.kind == "error_page"


def test_a_sql_error_and_a_4xx_are_not_retried(standin):
    sleep = Backoffs()
    with _client(standin.url, retries=6, sleep=sleep) as client:
        with pytest.raises(SkyServerQueryError):
            client.sql("SELECT TOP 1 nosuchcol FROM SpecObj")
        with pytest.raises(SkyServerHTTPError, match="HTTP 400"):
            client.request("SkyServerWS/SearchTools/SqlSearch", {"cmd": "SELECT 1", "format": "xml"}, what="xml")
    assert standin.stats()["sqlsearch"]["requests"] == 2 and sleep.delays == []


# --- one requests.Session per thread, one rate limit for all ------------------------------------------------------

def test_each_thread_has_its_own_session_and_one_rate_limit_holds_for_all(standin):
    clock = FrozenClock()
    opened_before, closed_before = session_counts()
    used = {}
    with _client(standin.url, limiter=RateLimiter(10, clock=clock.now, sleep=clock.sleep)) as client:
        def work(name):
            sessions = set()
            for _ in range(5):
                client.sql("SELECT TOP 1 objID FROM PhotoObj")
                sessions.add(id(client.session))  # the session this thread's requests went through
            used[name] = sessions

        workers = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert client.sessions_opened == 4
    assert all(len(s) == 1 for s in used.values())  # a thread keeps its session ...
    assert len(set().union(*used.values())) == 4  # ... and shares it with no other thread
    assert session_counts() == (opened_before + 4, closed_before + 4)  # all closed with the client
    # 20 requests, 20 distinct slots 0.1 s apart: one limiter for the four threads, not one each.
    assert standin.stats()["sqlsearch"]["requests"] == 20
    assert sorted(clock.waits) == pytest.approx([k * 0.1 for k in range(1, 20)])
