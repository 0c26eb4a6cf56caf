"""Brokers as they are: why a connection fails, protocol fallback, lost sessions, other brokers."""

import json
import threading

import psutil
import pytest

from tests.conftest import assert_all_arrived, wait_until
from tests.publisher import Publisher

pytestmark = [pytest.mark.integration, pytest.mark.paho]


def status_exit(daemon):
    return daemon.ctl("status")[0]


def wait_for_log(daemon, text, timeout):
    wait_until(lambda: text in daemon.log(), timeout, f"{text!r} in the log")
    return next(line for line in daemon.log().splitlines() if text in line)


def test_silent_port_is_named_and_status_degraded(silent_port, sink, make_daemon):
    daemon = make_daemon(silent_port, sink, mqtt={"connect_timeout": 3}).start(wait_ready=False)
    line = wait_for_log(daemon, "Cannot connect to MQTT broker", 30)
    print(line)
    assert "WARNING" in line and f"no answer from 127.0.0.1:{silent_port.port} within 3s" in line
    assert "trying MQTT 3.1.1 next" in line
    wait_until(lambda: status_exit(daemon) == 1, 30, "status to exit 1 (degraded)")
    broker = daemon.status()["broker"]
    assert broker["connected"] is False and "no answer" in broker["error"]
    assert daemon.log().count("Cannot connect to MQTT broker") == 1, "later failures go into a summary"


def test_tls_private_ca_untrusted_fails_with_the_cause_trusted_works(tmp_path, tls_mosquitto, sink, make_daemon):
    untrusted = make_daemon(tls_mosquitto, sink, mqtt={"client_id": "tls-untrusted"}).start(wait_ready=False)
    line = wait_for_log(untrusted, "Cannot connect to MQTT broker", 30)
    print(line)
    assert "TLS: certificate verify failed for 127.0.0.1" in line and "system's CA certificates" in line
    wait_until(lambda: status_exit(untrusted) == 1, 30, "status to exit 1 (degraded)")
    untrusted.terminate()

    trusted_mqtt = {"client_id": "tls-trusted", "tls": {"ca_file": str(tls_mosquitto.ca)}}
    trusted = make_daemon(tls_mosquitto, sink, mqtt=trusted_mqtt,
                          buffer={"persist_file": str(tmp_path / "trusted.db")}).start()
    publisher = Publisher(tls_mosquitto.port)
    try:
        assert_all_arrived(sink, publisher.publish(50).accepted())
    finally:
        publisher.close()
    assert status_exit(trusted) == 0
    assert "Cannot connect" not in trusted.log()


def test_amqtt_auto_falls_back_to_311_and_a_lost_session_is_loud(amqtt_broker, sink, make_daemon):
    # amqtt answers a bare MQTT 5 CONNECT with "unsupported protocol version", but one with
    # properties (ours) not at all: the fallback then comes after connect_timeout.
    daemon = make_daemon(amqtt_broker, sink, mqtt={"connect_timeout": 2}).start()
    log = daemon.log()
    assert "MQTT 3.1.1 next (mqtt.protocol: auto)" in log or "using MQTT 3.1.1 (mqtt.protocol: auto)" in log
    assert "(MQTT 3.1.1, session present: no)" in log
    publisher = Publisher(amqtt_broker.port)
    try:
        assert_all_arrived(sink, publisher.publish(100).accepted())
    finally:
        publisher.close()
    assert daemon.status()["broker"]["protocol"] == "3.1.1"

    daemon.mark_connection()
    amqtt_broker.restart()  # amqtt keeps sessions in memory only
    line = wait_for_log(daemon, "kept no session", 30)
    print(line)
    assert "WARNING" in line and "may be lost at the broker" in line and "persistence true" in line
    wait_until(daemon.resubscribed, 20, "a new subscription")
    assert daemon.status()["broker"]["sessions_lost"] == 1


def test_amqtt_with_311_configured(amqtt_broker, sink, make_daemon):
    daemon = make_daemon(amqtt_broker, sink, mqtt={"protocol": "3.1.1"}).start()
    assert "Cannot connect" not in daemon.log()
    publisher = Publisher(amqtt_broker.port)
    try:
        assert_all_arrived(sink, publisher.publish(50).accepted())
    finally:
        publisher.close()


def test_mqtt5_forced_on_a_311_broker_says_so(amqtt_broker, sink, make_daemon):
    daemon = make_daemon(amqtt_broker, sink, mqtt={"protocol": "5", "connect_timeout": 3}).start(wait_ready=False)
    line = wait_for_log(daemon, "Cannot connect to MQTT broker", 30)
    print(line)
    assert "MQTT 5" in line and ("unsupported protocol version" in line or "within 3s" in line)
    assert "next (mqtt.protocol: auto)" not in line
    wait_until(lambda: status_exit(daemon) == 1, 30, "status to exit 1 (degraded)")


def test_mosquitto_without_persistence_restarting_is_a_loud_session_loss(mosquitto, sink, make_daemon):
    daemon = make_daemon(mosquitto, sink).start()
    assert "(MQTT 5, session present: no)" in daemon.log()
    daemon.mark_connection()
    mosquitto.stop()
    mosquitto.start()
    line = wait_for_log(daemon, "kept no session", 30)
    assert "WARNING" in line
    wait_until(daemon.resubscribed, 20, "a new subscription")
    status = daemon.status()["broker"]
    assert status["sessions_lost"] == 1 and status["connected"] and status["session_present"] is False


def test_persistent_broker_restart_keeps_the_session_quietly_and_sends_no_retained_again(
        persistent_mosquitto, sink, make_daemon):
    publisher = Publisher(persistent_mosquitto.port)
    publisher.client.publish("test/state", b"on", qos=1, retain=True).wait_for_publish(10)
    publisher.close()
    daemon = make_daemon(persistent_mosquitto, sink).start()
    wait_until(sink.delivered, 20, "the retained message")
    daemon.mark_connection()
    persistent_mosquitto.restart()
    wait_until(daemon.resubscribed, 30, "a new subscription")
    assert "(MQTT 5, session present: yes)" in daemon.log()
    assert "kept no session" not in daemon.log()
    assert "does not promise to keep packet ids" not in daemon.log(), "mosquitto's MQTT 5 has QoS 2"
    assert daemon.status()["broker"]["sessions_lost"] == 0
    publisher = Publisher(persistent_mosquitto.port)
    try:
        assert_all_arrived(sink, publisher.publish(10).accepted())
    finally:
        publisher.close()
    retained = [m for m in sink.delivered() if m["topic"] == "test/state"]
    assert len(retained) == 1, "MQTT 5 retain handling: a kept session's resubscribe brings no retained copy"


def test_rabbitmq_311_auto_delivers(rabbitmq, sink, make_daemon):
    daemon = make_daemon(rabbitmq, sink).start()
    assert "using MQTT 3.1.1 (mqtt.protocol: auto)" in daemon.log()
    publisher = Publisher(rabbitmq.port, topic="test/rabbit")
    try:
        assert_all_arrived(sink, publisher.publish(500).accepted())
    finally:
        publisher.close()
    status = daemon.status()
    assert status["broker"]["protocol"] == "3.1.1" and status_exit(daemon) == 0
    print(json.dumps(status["broker"]))


def test_rabbitmq_reconnect_gives_no_two_messages_one_id(rabbitmq, sink, make_daemon):
    """RabbitMQ numbers every connection's messages from 1 and resends under new packet ids, so a
    packet id proves nothing there (MQTT 3.1.1 promises nothing about them): with every payload
    the same, a resent copy matched by packet id could take another message's id and be dropped."""
    daemon = make_daemon(rabbitmq, sink, mqtt={"client_id": "rabbit-reconnect"}).start()
    print(wait_for_log(daemon, "does not promise to keep packet ids", 10))
    publisher = Publisher(rabbitmq.port, topic="test/rabbit-on")
    dropping = threading.Thread(target=rabbitmq.close_connections)  # rabbitmqctl takes a second or two

    def drop_midstream(n):
        if n == 0:
            dropping.start()

    try:
        # Still flowing when the connections drop: RabbitMQ resends the unacked as 1, 2, ...
        publisher.publish(900, rate=300, during=drop_midstream, payload='{"state": "ON"}')
        accepted = len(publisher.accepted())
    finally:
        dropping.join()
        publisher.close()
    wait_for_log(daemon, "session present: yes", 30)
    publisher = Publisher(rabbitmq.port, topic="test/rabbit-on")
    try:
        accepted += len(publisher.publish(300, payload='{"state": "ON"}').accepted())
    finally:
        publisher.close()

    def ids():
        return {m["id"] for m in sink.delivered() if m["topic"] == "test/rabbit-on"}

    wait_until(lambda: len(ids()) >= accepted, 30, f"{accepted} messages under ids of their own")
    print(f"{accepted} accepted, {len(ids())} ids at the API")


def test_shared_subscription_scales_out_and_a_killed_instance_loses_nothing(tmp_path, mosquitto, sink, make_daemon,
                                                                           publisher):
    daemons = [make_daemon(mosquitto, sink, mqtt={"client_id": f"share-{i}"}, topics=["$share/buffers/test/#"],
                           buffer={"persist_file": str(tmp_path / f"store{i}" / "buffer.db")}).start()
               for i in range(2)]
    publisher.publish(1000, rate=1000)
    accepted = publisher.accepted()
    wait_until(lambda: len(sink.delivered()) >= 1000, 30, "the first 1000")
    numbers = sink.delivered_numbers()
    assert sorted(numbers) == sorted(accepted), "each message once across the instances"
    assert len({m["id"].split("-")[0] for m in sink.delivered()}) == 2, "both instances took a share"

    def kill_and_restart(n):
        if n == 1500:
            daemons[1].kill_group()
        if n == 2500:
            daemons[1].start(wait_ready=False)

    accepted = publisher.publish(2000, rate=1000, during=kill_and_restart).accepted()
    assert_all_arrived(sink, accepted)
    duplicates = len(sink.delivered_numbers()) - len(set(sink.delivered_numbers()))
    print(f"shared subscription: {len(accepted)} accepted, all delivered, {duplicates} duplicates")


def test_big_messages_queued_at_the_broker_do_not_swell_the_ingestor(mosquitto, sink, make_daemon):
    """20 x 4 MB waiting in the session: the ingestor holds about mqtt.max_inflight_bytes (8 MiB) of
    them at a time and lets the broker keep the rest."""
    daemon = make_daemon(mosquitto, sink, buffer={"max_bytes": 512 * 1024 * 1024}).start()
    daemon.terminate()
    publisher = Publisher(mosquitto.port)
    try:
        for n in range(20):
            publisher.infos.append(publisher.client.publish("test/big", b"%03d" % n + b"x" * (4 * 1024 * 1024), qos=1))
        assert len(publisher.accepted(timeout=60)) == 20
    finally:
        publisher.close()
    daemon.start(wait_ready=False)
    peak = [0]

    def all_arrived():
        pid = daemon.worker_pid("ingestor")
        if pid:
            try:
                peak[0] = max(peak[0], psutil.Process(pid).memory_info().rss)
            except psutil.NoSuchProcess:
                pass
        return len({m["payload"][:3] for m in sink.delivered()}) == 20

    wait_until(all_arrived, 90, "20 big messages", interval=0.02)
    print(f"ingestor peak RSS {peak[0] / 1048576:.0f} MiB for 20 x 4 MiB")
    assert peak[0] < 100 * 1048576
    assert daemon.status()["workers"]["ingestor"]["restarts"] == 0
