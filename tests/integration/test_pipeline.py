"""End to end through a real mosquitto and a real HTTP server: nothing the broker accepted is lost."""

import re

import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def assert_all_arrived(sink, accepted, timeout=60):
    wait_until(lambda: accepted <= set(sink.delivered_numbers()), timeout,
               f"{len(accepted)} messages to arrive")
    numbers = sink.delivered_numbers()
    duplicates = len(numbers) - len(set(numbers))
    print(f"{len(accepted)} accepted by the broker, {len(set(numbers))} delivered, {duplicates} duplicates")
    return duplicates


def test_5000_messages_arrive_in_wire_format(mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink, api={"key": "sekrit-api-key"}).start()
    accepted = publisher.publish(5000, rate=1000).accepted()
    assert len(accepted) == 5000
    assert_all_arrived(sink, accepted)
    messages = sink.delivered()
    ids = [m["id"] for m in messages]
    assert len(ids) == len(set(ids)), "every message has its own id"
    first = messages[0]
    assert set(first) == {"id", "topic", "payload", "qos", "retain", "received_at"}
    assert first["topic"] == "test/data" and first["qos"] == 1 and first["retain"] is False
    assert first["payload"]["n"] == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["received_at"])
    headers = sink.requests[0][3]
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer sekrit-api-key" and headers["apikey"] == "sekrit-api-key"
    assert headers["User-Agent"].startswith("mqttbuffer/")
    assert "sekrit-api-key" not in daemon.log()
