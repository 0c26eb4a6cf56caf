"""A damaged store is salvaged and delivery goes on; a store that lost what the last run left is
reported."""

import os
import signal

import pytest

from mqttbuffer.store import Store
from tests.conftest import assert_all_arrived, wait_until
from tests.stores import damage, damage_table

pytestmark = pytest.mark.integration


def prefill(path, count):
    store = Store.open(path)
    import time
    stamp = time.time()
    store.insert([(f"old{n}", "test/old", b'"old-%d-%s"' % (n, b"x" * 150), 1, 0, stamp) for n in range(count)])
    store.close()


def test_a_store_with_a_damaged_page_is_salvaged_and_delivery_goes_on(mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink)
    path = daemon.config["buffer"]["persist_file"]
    os.makedirs(os.path.dirname(path))
    prefill(path, 3000)
    damage(path)
    daemon.start()
    accepted = publisher.publish(500, rate=500).accepted()
    assert_all_arrived(sink, accepted, timeout=60)
    log = daemon.log()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and path in errors[0] and "is damaged" in errors[0], errors
    salvaged = next(line for line in log.splitlines() if "salvaged" in line)
    saved = int(salvaged.split("salvaged ")[1].split(" ")[0])
    old = {m["id"] for m in sink.delivered() if m["topic"] == "test/old"}
    print(f"{salvaged.split(': ', 1)[1][:80]}...; {len(old)} old messages delivered, {len(accepted)} new")
    wait_until(lambda: len({m["id"] for m in sink.delivered() if m["topic"] == "test/old"}) >= saved, 30,
               "the salvaged messages")
    assert saved > 2500
    assert [f for f in os.listdir(os.path.dirname(path)) if ".corrupt-" in f]
    persister = daemon.status()["persister"]
    assert "salvaged" in persister["store_notice"] and not persister["blocked"]


def test_a_store_damaged_where_opening_reads_starts_and_is_salvaged(mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink)
    path = daemon.config["buffer"]["persist_file"]
    os.makedirs(os.path.dirname(path))
    prefill(path, 300)
    damage_table(path, "totals")
    daemon.start()
    accepted = publisher.publish(100, rate=500).accepted()
    assert_all_arrived(sink, accepted, timeout=30)
    wait_until(lambda: len({m["id"] for m in sink.delivered() if m["topic"] == "test/old"}) == 300, 30,
               "the salvaged messages")
    assert "salvaged 300 messages" in daemon.status()["persister"]["store_notice"]


def test_a_store_truncated_to_nothing_is_reported(mosquitto, sink, make_daemon, publisher):
    sink.status = 503
    daemon = make_daemon(mosquitto, sink, circuit_breaker={"max_failures": 1, "timeout": 60}).start()
    publisher.publish(200).accepted()
    wait_until(lambda: daemon.status()["counters"]["persisted"] == 200, 20, "200 stored")
    daemon.terminate()
    path = daemon.config["buffer"]["persist_file"]
    os.truncate(path, 0)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    daemon.start()
    wait_until(lambda: "holds no messages, but 200 were waiting" in daemon.log(), 10, "the loss to be reported")
    assert "holds no messages" in daemon.status()["persister"]["store_notice"]


def test_a_store_that_lost_its_wal_is_reported(mosquitto, sink, make_daemon, publisher):
    sink.status = 503
    daemon = make_daemon(mosquitto, sink, circuit_breaker={"max_failures": 1, "timeout": 60}).start()
    publisher.publish(200).accepted()
    wait_until(lambda: daemon.status()["counters"]["persisted"] == 200, 20, "200 stored")
    path = daemon.config["buffer"]["persist_file"]
    wait_until(lambda: '"pending": 200' in open(path + ".state").read(), 15, "the marker")
    daemon.process.send_signal(signal.SIGKILL)  # the workers die with it; the WAL stays un-checkpointed
    daemon.process.wait(10)
    wait_until(lambda: not daemon.all_workers_running(), 5, "the workers to go")
    os.unlink(path + "-wal")
    daemon.start()
    wait_until(lambda: "lost its -wal" in daemon.log(), 10, "the loss to be reported")
