"""Dead letters never leave silently: forgetting them is one WARNING with the count."""

import logging
import time
import types

import yaml

from mqttbuffer.config.loader import load_config
from mqttbuffer.stats import SharedStats
from mqttbuffer.store import Store
from mqttbuffer.workers.persister import Persister


def test_forgetting_dead_letters_beyond_the_cap_is_one_warning_with_the_count(tmp_path, caplog):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"api": {"url": "http://127.0.0.1:9/t"},
                                    "buffer": {"persist_file": str(tmp_path / "b.db"), "dead_letter_max_size": 2}}))
    persister = Persister(load_config(str(path)), str(tmp_path), SharedStats())
    persister.store = Store.open(str(tmp_path / "b.db"))
    persister.retention = types.SimpleNamespace(plan=lambda *args: (True, None))
    now = time.time()
    persister.store.insert([(f"id{n}", "t", b"1", 1, 0, now) for n in range(5)])
    persister.store.dead_letter([row[0] for row in persister.store.oldest(5)], "rejected", now, 400, "no")
    with caplog.at_level(logging.INFO, logger="mqttbuffer.persister"):
        persister._clean_up()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [("WARNING", "Forgot 3 dead letters for good (older than buffer.dead_letter_retention_days = 7"
                                 " or beyond buffer.dead_letter_max_size = 2)")]
    assert persister.store.dead_letter_count() == 2


def test_messages_expired_under_a_doubtful_clock_are_not_forgotten_by_the_count_cap(tmp_path, caplog):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"api": {"url": "http://127.0.0.1:9/t"},
                                    "buffer": {"persist_file": str(tmp_path / "b.db"), "dead_letter_max_size": 2}}))
    persister = Persister(load_config(str(path)), str(tmp_path), SharedStats())
    persister.store = Store.open(str(tmp_path / "b.db"))
    persister.expired_unsure = 0
    persister.retention = types.SimpleNamespace(plan=lambda *args: (True, 2))  # the clock jumped
    now = time.time()
    persister.store.insert([(f"bad{n}", "t", b"1", 1, 0, now) for n in range(3)])
    persister.store.dead_letter([row.seq for row in persister.store.oldest(3)], "rejected", now, 400, "no")
    persister.store.insert([(f"old{n}", "t", b"1", 1, 0, now - 30 * 86400) for n in range(5)])
    with caplog.at_level(logging.INFO, logger="mqttbuffer.persister"):
        for _ in range(3):
            persister._clean_up()
    ids = {d["id"] for d in persister.store.dead_letters()}
    assert {f"old{n}" for n in range(5)} <= ids and persister.store.totals()[0] == 0
    assert persister.store.dead_letter_count() == 7
    assert sum("kept beyond buffer.dead_letter_max_size = 2" in r.getMessage() for r in caplog.records) == 1
