"""What the operator runs beside the daemon: mqttbufferctl with the daemon stopped."""

import json
import subprocess
import sys
import time

import pytest
import yaml

from mqttbuffer.store import Store

pytestmark = pytest.mark.integration


def ctl(config, *args):
    result = subprocess.run([sys.executable, "-m", "mqttbuffer.ctl", "--config", str(config), *args],
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
