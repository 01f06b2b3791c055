"""`psp-gateway serve --workers 2` as a real process: GET /metrics, answered by either child, adds
up the counters of both and reports the database's gauges once; the shared folder goes at stop."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import GatewayProcess, free_port

KEY = "sk_workers_metrics_0123456789"
CONFIG = f"""
[[processors]]
id = "mock"
kind = "mock"

[[clients]]
id = "billing"
api_key = "{KEY}"
scopes = ["transactions:write", "transactions:read", "refunds:write", "refunds:read"]
"""
REFUNDS = 6


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    with httpx.Client(timeout=10) as client:  # a connection of its own: the kernel picks the child
        resp = client.get(f"{url}/metrics")
    assert resp.status_code == 200, resp.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_two_server_processes_report_every_refund_once_and_the_database_gauges_once(tmp_path, database_url):
    gateway = GatewayProcess(tmp_path, CONFIG, "serve", extra_args=["--workers", "2"],
                             GATEWAY_DATABASE_URL=database_url, GATEWAY_DB_POOL_MIN="2", TMPDIR=str(tmp_path))
    try:
        gateway.wait_ready(60)
        # Both children write their pool's numbers: the sum shows both are counted.
        gateway.wait_until(lambda: sum(value(scrape(gateway.url), "psp_gateway_db_pool_connections", state=state)
                                           for state in ("idle", "in_use")) >= 4,
                           "both processes in /metrics")
        assert len(list(tmp_path.glob("psp-gateway-metrics-*"))) == 1  # made by the parent, under TMPDIR
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as client:
            assert client.post("/v1/transactions", json={
                "processor": "mock", "psp_reference": "ch_workers", "invoice_id": "INV-W", "amount": 100_000,
                "currency": "EUR"}).status_code == 201
        for n in range(REFUNDS):
            with httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as client:  # new connections
                refund = client.post("/v1/refunds", json={"invoice_id": "INV-W", "amount": 100 + n, "currency": "EUR"})
                assert refund.json()["status"] == "succeeded", refund.text
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as client:
            stuck = client.post("/v1/refunds", json={"invoice_id": "INV-W", "amount": 8001, "currency": "EUR"})
            assert stuck.json()["status"] == "requires_attention", stuck.text
        for _ in range(6):  # whichever child answers, nothing is lost and nothing doubled
            samples = scrape(gateway.url)
            assert value(samples, "psp_gateway_refund_transitions_total", processor="mock", status="succeeded") == REFUNDS
            assert value(samples, "psp_gateway_processor_call_duration_seconds_count", processor="mock",
                         operation="refund", outcome="succeeded") == REFUNDS
            assert value(samples, "psp_gateway_refunds_stuck", reason="requires_attention:unrecognised_processor_status") == 1
            assert value(samples, "psp_gateway_database_up") == 1
    finally:
        exit_code = gateway.stop()
    assert exit_code == 0
    assert not list(tmp_path.glob("psp-gateway-metrics-*")), "the shared metrics folder outlived the gateway"


def test_a_worker_answers_metrics_on_its_own_port_and_nothing_else(tmp_path, database_url):
    port = free_port()
    worker = GatewayProcess(tmp_path, CONFIG, "worker", extra_args=["--metrics-port", str(port)], port=port,
                            GATEWAY_DATABASE_URL=database_url, GATEWAY_DB_POOL_MIN="2")
    try:
        worker.wait_working()
        worker.wait_until(lambda: sum(value(scrape(worker.url), "psp_gateway_db_pool_connections", state=state)
                                          for state in ("idle", "in_use")) >= 2,
                          "its pool in /metrics")
        assert value(scrape(worker.url), "psp_gateway_database_up") == 1
        with httpx.Client(base_url=worker.url, timeout=10) as client:
            assert client.get("/readyz").status_code == 404  # the API is not served here
            assert client.post("/v1/refunds", json={}).status_code == 404
    finally:
        assert worker.stop() == 0
