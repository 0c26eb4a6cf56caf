"""The Prometheus exposition: parsed back by prometheus_client's own parser; the listen address."""

import json
import pathlib
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mqttbuffer.stats import COUNTERS
from mqttbuffer.supervisor.metrics import parse_listen, render

DOC = {
    "version": "0.1.0",
    "uptime": 12.5,
    "workers": {name: {"alive": True, "restarts": n, "rss_bytes": 20_000_000 + n}
                for n, name in enumerate(("persister", "ingestor", "forwarder"))},
    "buffer": {"pending": 3214, "bytes": 99_000, "oldest_age": 420.25, "dead_letters": 2, "blocked": False},
    "circuit": {"state": "open", "next_attempt_in": 3.0},
    "counters": {name: 10 * i for i, name in enumerate(COUNTERS)},
    "broker": {"connected": True},
    "api": {"state": "refusing"},
    "health": {"verdict": "degraded", "reasons": ['API refusing (401): "quoted"\n']},
}


def samples():
    out = {}
    for family in text_string_to_metric_families(render(DOC)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_counter_of_the_status_document_is_exposed_with_its_value():
    values = samples()
    for name in COUNTERS:
        if name not in ("requests_2xx", "requests_3xx", "requests_4xx", "requests_5xx", "requests_error"):
            assert values[(f"mqttbuffer_{name}_total", ())] == DOC["counters"][name]
    for cls in ("2xx", "3xx", "4xx", "5xx", "error"):
        assert values[("mqttbuffer_requests_by_class_total", (("class", cls),))] == DOC["counters"][f"requests_{cls}"]


def test_gauges_states_and_workers():
    values = samples()
    assert values[("mqttbuffer_pending_messages", ())] == 3214
    assert values[("mqttbuffer_pending_bytes", ())] == 99_000
    assert values[("mqttbuffer_oldest_age_seconds", ())] == 420.25
    assert values[("mqttbuffer_dead_letters", ())] == 2
    assert values[("mqttbuffer_circuit_state", (("state", "open"),))] == 1
    assert values[("mqttbuffer_circuit_state", (("state", "closed"),))] == 0
    assert values[("mqttbuffer_api_state", (("state", "refusing"),))] == 1
    assert values[("mqttbuffer_broker_connected", ())] == 1
    assert values[("mqttbuffer_healthy", ())] == 0
    assert values[("mqttbuffer_worker_restarts_total", (("worker", "forwarder"),))] == 2
    assert values[("mqttbuffer_worker_rss_bytes", (("worker", "ingestor"),))] == 20_000_001
    assert values[("mqttbuffer_worker_up", (("worker", "persister"),))] == 1
    assert values[("mqttbuffer_info", (("version", "0.1.0"),))] == 1


def test_no_waiting_message_is_age_zero():
    doc = {**DOC, "buffer": {**DOC["buffer"], "oldest_age": None}}
    assert "mqttbuffer_oldest_age_seconds 0\n" in render(doc)


@pytest.mark.parametrize("text, address", [("127.0.0.1:9108", ("127.0.0.1", 9108)), ("[::1]:9108", ("::1", 9108)),
                                           ("0.0.0.0:80", ("0.0.0.0", 80)), ("localhost:9108", ("localhost", 9108))])
def test_listen_ok(text, address):
    assert parse_listen(text) == address


@pytest.mark.parametrize("text", ["9108", ":9108", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "host:port"])
def test_listen_fail(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(text)


def test_the_grafana_dashboard_asks_only_for_metrics_that_exist():
    dashboard = json.loads((pathlib.Path(__file__).resolve().parents[2] / "etc" / "grafana-dashboard.json").read_text())
    exposed = {family.name for family in text_string_to_metric_families(render(DOC))}
    asked = {name.removesuffix("_total") for panel in dashboard["panels"] for target in panel["targets"]
             for name in re.findall(r"mqttbuffer_[a-z_]+", target["expr"])}
    assert asked and asked <= exposed, asked - exposed
