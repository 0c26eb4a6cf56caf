"""Delivery into a real PostgreSQL through a receiver that answers as PostgREST (and so Supabase)
does: endpoints that refuse everything hold the queue, duplicates after a lost answer count as
delivered, mixed payloads make one shape per body. The table is examples/supabase/mqtt_messages.sql."""

import json
import os
import signal
import types

import pytest
import urllib3

from mqttbuffer.delivery.wire import BodyShape
from tests.conftest import wait_until
from tests.postgrest import TABLE, PgError, literal, wait_for_rows

pytestmark = pytest.mark.integration

FAST_HOLD = {"max_failures": 3, "timeout": 1}


def api_daemon(make_daemon, mosquitto, receiver, table=TABLE, **api):
    return make_daemon(mosquitto, types.SimpleNamespace(url=receiver.url(table)),
                       api={"key": "test-key", "max_refused_backoff": 1, **api}, circuit_breaker=FAST_HOLD)


def test_the_supabase_table_takes_the_default_body_and_row_level_security_allows_insert_only(postgrest, postgres):
    body = BodyShape().encode([
        ("a", "t/json", b'{"Power": 12}', 1, 0, 1.7e9), ("b", "t/text", b"on", 0, 1, 1.7e9),
        ("c", "t/bin", b"\xff\x00", 1, 0, 1.7e9), ("d", "t/deep", b"[" * 1000 + b"]" * 1000, 1, 0, 1.7e9)])
    http = urllib3.PoolManager()
    headers = {"apikey": "test-key", "Authorization": "Bearer test-key", "Content-Type": "application/json"}
    assert http.request("POST", postgrest.url(TABLE), body=body, headers=headers).status == 201
    rows = postgres.sql(f"SELECT id, payload::text, payload_encoding, received_at FROM {TABLE} ORDER BY id")
    assert [r[:3] for r in rows[:3]] == [("a", '{"Power": 12}', "json"), ("b", '"on"', "text"),
                                         ("c", '"/wA="', "base64")]
    duplicate = http.request("POST", postgrest.url(TABLE), body=body, headers=headers)
    assert duplicate.status == 409 and json.loads(duplicate.data)["code"] == "23505"
    skip = {**headers, "Prefer": "resolution=ignore-duplicates, return=minimal"}
    refused = http.request("POST", postgrest.url(TABLE), body=body, headers=skip)
    assert refused.status == 401, "skipping duplicates needs a SELECT policy the insert-only key lacks"
    postgrest.role = "service_role"
    assert http.request("POST", postgrest.url(TABLE), body=body, headers=skip).status == 201
    mixed = http.request("POST", postgrest.url(TABLE), body=b'[{"id": "x"}, {"id": "y", "topic": "t"}]',
                         headers=headers)
    assert (mixed.status, json.loads(mixed.data)["code"]) == (400, "PGRST102")
    with pytest.raises(PgError, match="permission denied"):
        postgres.sql(f"SELECT * FROM {TABLE}", role="anon")


@pytest.mark.parametrize("phase", ["wrong key (401)", "missing table (404)"])
def test_an_endpoint_that_refuses_everything_holds_all_then_delivers_all(phase, postgrest, postgres, mosquitto,
                                                                         make_daemon, publisher):
    if "401" in phase:
        postgrest.key = "rotated-key"
    else:
        postgres.sql(f"ALTER TABLE {TABLE} RENAME TO {TABLE}_later")
    daemon = api_daemon(make_daemon, mosquitto, postgrest).start()
    accepted = publisher.publish(1000, rate=1000).accepted()
    status = "401" if "401" in phase else "404"
    wait_until(lambda: f"API refuses every request: {status}" in daemon.log(), 20, "the ERROR line")
    error = next(line for line in daemon.log().splitlines() if "API refuses every request" in line)
    print(error)
    assert "ERROR" in error and postgrest.url(TABLE) in error
    assert ("check api.key" if status == "401" else "check api.url") in error
    code, out, _ = daemon.ctl("status")
    print(out)
    assert code == 1 and f"refusing ({status})" in out
    assert daemon.status()["api"]["state"] == "refusing"
    assert daemon.store().dead_letter_count() == 0

    if "401" in phase:
        postgrest.key = "test-key"
    else:
        postgres.sql(f"ALTER TABLE {TABLE}_later RENAME TO {TABLE}")
    total, distinct = wait_for_rows(postgres, TABLE, len(accepted), timeout=30)
    refused = sum(1 for s in postgrest.statuses() if s == int(status))
    print(f"{phase}: {len(accepted)} published, {distinct} rows ({total - distinct} duplicates),"
          f" {refused} refused requests, {daemon.store().dead_letter_count()} dead letters")
    assert (total, distinct) == (len(accepted), len(accepted)) == (1000, 1000)
    assert daemon.store().dead_letter_count() == 0
    wait_until(lambda: "API accepts messages again" in daemon.log(), 10, "the line saying it ended")
    assert daemon.ctl("status")[0] == 0 or daemon.status()["api"]["state"] == "ok"


@pytest.mark.parametrize("role", ["service_role", "anon"])
def test_a_forwarder_killed_between_the_commit_and_the_answer_leaves_every_row_once(role, postgrest, postgres,
                                                                                   mosquitto, make_daemon, publisher):
    # service_role: the resend asking to skip held rows goes in at once; anon (insert-only policy):
    # that resend is refused (401), so the batch is split and each held id counts as delivered.
    postgrest.role = role
    daemon = api_daemon(make_daemon, mosquitto, postgrest)
    killed = []

    def kill_forwarder(rows):
        if not killed and len(rows) >= 50:
            killed.append(len(rows))
            os.kill(daemon.worker_pid("forwarder"), signal.SIGKILL)

    daemon.config["buffer"] = {**daemon.config["buffer"], "flush_interval": 1, "batch_size": 100}
    daemon.start()
    postgrest.on_commit = kill_forwarder
    accepted = publisher.publish(1000, rate=1000).accepted()
    total, distinct = wait_for_rows(postgres, TABLE, len(accepted), timeout=60)
    statuses = postgrest.statuses()
    print(f"{role}: killed after a commit of {killed} rows; {len(statuses)} requests,"
          f" {statuses.count(409)} answered 409; {distinct} rows, {total - distinct} duplicates,"
          f" {daemon.store().dead_letter_count()} dead letters")
    assert killed and statuses.count(409) >= 1, "the resend met the rows the lost answer had committed"
    assert (total, distinct) == (1000, 1000)
    assert daemon.store().dead_letter_count() == 0
    wait_until(lambda: daemon.status()["buffer"]["pending"] == 0, 20, "an empty queue")


def test_mixed_json_text_and_binary_payloads_go_in_without_a_refused_request(postgrest, postgres, mosquitto,
                                                                             make_daemon, publisher):
    daemon = api_daemon(make_daemon, mosquitto, postgrest, headers={"Prefer": "return=minimal"}).start()
    payloads = [b'{"n": 1}', b"\xff\xfe binary", b"plain text", b"[" * 1000 + b"]" * 1000, b"\x00",
                b'"\\ud800"', b"1" * 5000, b"42"]
    for i in range(200):
        publisher.client.publish("test/mixed", payloads[i % len(payloads)], qos=1)
    total, distinct = wait_for_rows(postgres, TABLE, 200, timeout=30)
    statuses = postgrest.statuses()
    encodings = dict(postgres.sql(f"SELECT payload_encoding, count(*) FROM {TABLE} GROUP BY 1"))
    print(f"{len(statuses)} requests, {sum(s >= 400 for s in statuses)} refused; rows by encoding {encodings}")
    assert (total, distinct) == (200, 200)
    assert all(s == 201 for s in statuses)
    assert daemon.store().dead_letter_count() == 0
    assert postgres.sql(f"SELECT count(*) FROM {TABLE} WHERE payload = {literal('42')}::jsonb")[0] == ("25",)
