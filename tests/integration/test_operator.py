"""What the operator runs beside the daemon: mqttbufferctl with the daemon stopped, doctor, metrics."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mqttbuffer.store import Store
from tests.conftest import Mosquitto, assert_all_arrived, free_port, wait_until
from tests.postgrest import TABLE
from tests.tls import make_ca, make_server_cert, tls_listener_config

pytestmark = pytest.mark.integration


def ctl(config, *args):
    result = subprocess.run([sys.executable, "-m", "mqttbuffer.control.ctl", "--config", str(config), *args],
                            capture_output=True, text=True, timeout=20)
    return result.returncode, result.stdout, result.stderr


def stopped_daemon_config(tmp_path, store_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"api": {"url": "http://127.0.0.1:9/ingest"},
                                      "buffer": {"persist_file": str(store_path)}}))
    return config


def test_dead_letters_work_with_the_daemon_stopped_and_other_commands_say_not_running(tmp_path):
    store_path = tmp_path / "store" / "buffer.db"
    store = Store.open(str(store_path))
    store.insert([(f"id{n}", "t/a", b'{"n": %d}' % n, 1, 0, time.time()) for n in range(3)])
    store.dead_letter([row[0] for row in store.oldest(2)], "rejected", time.time(), 400, "bad value")
    store.close()
    config = stopped_daemon_config(tmp_path, store_path)

    code, out, err = ctl(config, "dead-letters", "list", "--json")
    assert code == 0 and "not running; using the store " + str(store_path) in err
    assert sorted(d["id"] for d in json.loads(out)) == ["id0", "id1"]
    code, out, _ = ctl(config, "dead-letters", "replay", "id0")
    assert code == 0 and "replayed 1" in out
    code, out, _ = ctl(config, "dead-letters", "purge")
    assert code == 0 and "purged 1" in out
    for args in (["status"], ["restart-worker", "forwarder"]):
        code, _, err = ctl(config, *args)
        assert code == 3 and "not running" in err


def test_dead_letters_with_no_store_says_where_it_looked(tmp_path):
    config = stopped_daemon_config(tmp_path, tmp_path / "nowhere" / "buffer.db")
    code, _, err = ctl(config, "dead-letters")
    assert code == 1 and "no store at " + str(tmp_path / "nowhere" / "buffer.db") in err
    assert not (tmp_path / "nowhere").exists()


def test_metrics_parse_and_match_status_json(mosquitto, sink, make_daemon, publisher):
    port = free_port()
    daemon = make_daemon(mosquitto, sink, metrics={"listen": f"127.0.0.1:{port}"}).start()
    sink.plan.append((503, {}))
    sink.reject = lambda m: 400 if m["payload"]["n"] == 0 else None
    publisher.publish(20)
    assert_all_arrived(sink, publisher.accepted() - {0})
    status = wait_until(lambda: (s := daemon.status())["counters"]["delivered"] == 19 and not s["buffer"]["pending"]
                        and s["buffer"]["dead_letters"] == 1 and s, 10, "counters and gauges to settle")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    values = {(s.name, tuple(s.labels.values())): s.value
              for family in text_string_to_metric_families(text) for s in family.samples}
    for name, value in status["counters"].items():
        if not name.startswith("requests_") or name == "requests_failed":
            assert values[(f"mqttbuffer_{name}_total", ())] == value, name
    assert status["counters"]["requests_5xx"] == values[("mqttbuffer_requests_by_class_total", ("5xx",))] == 1
    assert status["counters"]["requests_4xx"] >= 1 and status["counters"]["requests_2xx"] >= 2
    assert values[("mqttbuffer_pending_messages", ())] == status["buffer"]["pending"] == 0
    assert values[("mqttbuffer_dead_letters", ())] == 1
    assert values[("mqttbuffer_broker_connected", ())] == int(status["broker"]["connected"])
    assert values[("mqttbuffer_worker_rss_bytes", ("forwarder",))] > 1_000_000
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)


def test_metrics_are_off_by_default(mosquitto, sink, make_daemon):
    daemon = make_daemon(mosquitto, sink).start()
    wait_until(daemon.all_workers_running, 10, "all workers")
    assert not any(c.laddr.port == 9108 for c in psutil.Process(daemon.process.pid).net_connections("tcp")
                   if c.status == psutil.CONN_LISTEN)
    assert "Metrics at" not in daemon.log()


def doctor(config):
    code, out, err = ctl(config, "doctor")
    print(out)
    assert not err and "Traceback" not in out
    return code, out


def doctor_config(tmp_path, broker, api_url, key="wrong-key-4711", **mqtt):
    config = tmp_path / "doctor.yaml"
    config.write_text(yaml.safe_dump({
        "mqtt": {"broker": broker, "connect_timeout": 3, **mqtt},
        "api": {"url": api_url, "key": key},
        "buffer": {"persist_file": str(tmp_path / "store" / "buffer.db")},
        "topics": ["test/#"],
    }))
    return config


def line_and_fix(out, start):
    lines = out.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(start))
    return lines[i], lines[i + 1] if i + 1 < len(lines) else ""


def test_doctor_names_a_wrong_broker_port_and_a_wrong_api_key(tmp_path, sink):
    sink.status = 401
    code, out = doctor(doctor_config(tmp_path, f"tcp://127.0.0.1:{free_port()}", sink.url))
    assert code == 1
    broker, fix = line_and_fix(out, "✘ broker")
    assert "refused (nothing listens there?)" in broker and "fix: check mqtt.broker's host and port" in fix
    api, fix = line_and_fix(out, "✘ API")
    assert "refuses the request (401 Unauthorized" in api and "fix: check api.key" in fix
    assert "wrong-key-4711" not in out
    assert sink.requests[0][2] == [] and sink.requests[0][3]["apikey"] == "wrong-key-4711"
    assert out.startswith("✔ config ") and "✔ store directory " in out


def test_doctor_names_an_untrusted_ca_and_a_missing_table(tmp_path, sink):
    certs = tmp_path / "certs"
    certs.mkdir()
    make_ca(certs, "broker-ca")
    untrusted = make_ca(certs, "other-ca")
    broker = Mosquitto(tmp_path, tls_listener_config(*make_server_cert(certs, "broker-ca")))
    broker.start()
    try:
        sink.status = 404
        code, out = doctor(doctor_config(tmp_path, f"mqtts://127.0.0.1:{broker.port}", sink.url,
                                         tls={"ca_file": str(untrusted)}))
    finally:
        broker.stop()
    assert code == 1
    line, fix = line_and_fix(out, "✘ broker")
    assert "TLS: certificate verify failed" in line and "fix: set mqtt.tls.ca_file" in fix
    line, fix = line_and_fix(out, "✘ API")
    assert "refuses the request (404 Not Found" in line and "fix: check api.url (table or function name)" in fix


def test_doctor_passes_with_a_trusted_tls_broker_and_a_working_api(tmp_path, sink):
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = make_ca(certs, "broker-ca")
    broker = Mosquitto(tmp_path, tls_listener_config(*make_server_cert(certs, "broker-ca")))
    broker.start()
    try:
        code, out = doctor(doctor_config(tmp_path, f"mqtts://127.0.0.1:{broker.port}", sink.url,
                                         tls={"ca_file": str(ca)}, protocol="auto"))
    finally:
        broker.stop()
    assert code == 0 and "✘" not in out
    assert "TLS, MQTT 5 CONNECT accepted (mqtt.protocol auto picks 5)" in out
    assert "SUBSCRIBE to test/# granted" in out and "accepted an empty batch [] (200 OK)" in out


def status_text(daemon):
    code, out, _ = daemon.ctl("status")
    return code, out.splitlines()[0] if out else ""


def test_status_says_healthy_then_names_a_stopped_broker(mosquitto, sink, make_daemon):
    daemon = make_daemon(mosquitto, sink).start()
    wait_until(lambda: status_text(daemon)[0] == 0, 10, "healthy")
    assert status_text(daemon) == (0, "HEALTHY: all workers running; nothing waiting")
    mosquitto.stop()
    code, line = wait_until(lambda: (s := status_text(daemon))[0] == 1 and s, 30, "status to say degraded")
    print(line)
    assert line.startswith("DEGRADED: broker unreachable since ") and "refused" in line, line
    mosquitto.start()
    wait_until(lambda: status_text(daemon)[0] == 0, 20, "healthy again")


def test_status_names_an_api_that_refuses_with_401(mosquitto, sink, make_daemon, publisher):
    sink.status = 401
    daemon = make_daemon(mosquitto, sink, api={"max_refused_backoff": 1}).start()
    accepted = publisher.publish(5).accepted()
    # The waiting count follows within a second (forwarder.GAUGE_INTERVAL).
    code, line = wait_until(lambda: (s := status_text(daemon))[0] == 1 and "5 waiting" in s[1] and s, 20,
                            "status to say degraded")
    print(line)
    assert line.startswith("DEGRADED: API refusing (401) since ") and "401 Unauthorized" in line, line
    assert "check api.key" in line
    sink.status = 200
    assert_all_arrived(sink, accepted)
    wait_until(lambda: status_text(daemon)[0] == 0, 20, "healthy again")


def test_doctor_against_postgrest_names_a_missing_table_and_a_wrong_key(tmp_path, mosquitto, postgrest):
    code, out = doctor(doctor_config(tmp_path, mosquitto.url, postgrest.url("no_such_table"), key=postgrest.key))
    line, fix = line_and_fix(out, "✘ API")
    assert code == 1 and "404 Not Found" in line and "PGRST205" in line and "table or function name" in fix
    assert "✔ broker" in out and "SUBSCRIBE to test/# granted" in out
    code, out = doctor(doctor_config(tmp_path, mosquitto.url, postgrest.url(TABLE)))
    line, fix = line_and_fix(out, "✘ API")
    assert code == 1 and "401 Unauthorized" in line and "fix: check api.key" in fix
    code, out = doctor(doctor_config(tmp_path, mosquitto.url, postgrest.url(TABLE), key=postgrest.key))
    # The test receiver answers [] with 400 (real PostgREST may take it): not a failure, a hint.
    line, fix = line_and_fix(out, "! API")
    assert code == 0 and "refuses an empty batch [] (400" in line and "probe with one test message" in fix
