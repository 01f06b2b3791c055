"""The bench's profile summary: where a sample ended, by package."""

from tests.bench.__main__ import _package


def test_frames_are_bucketed_by_package_or_own_module():
    site = "/w/.venv/lib/python3.11/site-packages"
    assert _package(f"execute ({site}/asyncpg/connection.py:350)") == "asyncpg"
    assert _package(f"_redact ({site}/structlog/processors.py:10)") == "structlog"
    assert _package(f"dumps ({site}/orjson.cpython-311-x86_64-linux-gnu.so:0)") == "orjson"
    assert _package("record (/w/gateway/ledger.py:120)") == "gateway/ledger"
    assert _package("create_refund (/w/gateway/db/store.py:12)") == "gateway/db"
    assert _package("refund (/w/adapters/mock/client.py:7)") == "adapters/mock"
    assert _package("select (/usr/lib/python3.11/selectors.py:468)") == "python:selectors"
    assert _package("<native>") == "other"
    # py-spy names files relative to their sys.path entry
    assert _package("execute (asyncpg/connection.py:350)") == "asyncpg"
    assert _package("json_response (gateway/http.py:21)") == "gateway/http"
    assert _package("__exit__ (contextlib.py:144)") == "python:contextlib"
    assert _package("_run_code (<frozen runpy>:88)") == "python:runpy"
