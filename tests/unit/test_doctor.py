"""doctor's pieces that need no broker or API: PiKVM's PST check, the MQTT packets it sends."""

import types

from mqttbuffer.control import doctor
from mqttbuffer.mqtt import mqttprobe


def cfg(store):
    return types.SimpleNamespace(buffer=types.SimpleNamespace(persist_file=store))


def on_a_pikvm(monkeypatch):
    monkeypatch.setattr(doctor.shutil, "which", lambda name: "/usr/bin/kvmd-pstrun")


def test_no_pst_line_off_a_pikvm(monkeypatch):
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    monkeypatch.setattr(doctor.os.path, "isdir", lambda path: False)
    assert list(doctor.pikvm_checks(cfg("/var/lib/mqttbuffer/buffer.db"), {})) == []


def test_pst_not_mounted_says_to_run_under_kvmd_pstrun(monkeypatch):
    on_a_pikvm(monkeypatch)
    (check,) = doctor.pikvm_checks(cfg("/var/lib/mqttbuffer/buffer.db"), {})
    assert check.mark == doctor.FAIL and "kvmd-pstrun -- mqttbufferctl doctor" in check.fix


def test_a_store_off_pst_on_a_pikvm_fails_and_on_it_passes(monkeypatch, tmp_path):
    on_a_pikvm(monkeypatch)
    env = {"KVMD_PST_DATA": str(tmp_path)}
    (check,) = doctor.pikvm_checks(cfg("/var/lib/mqttbuffer/buffer.db"), env)
    assert check.mark == doctor.FAIL and "not on PST" in check.text
    (check,) = doctor.pikvm_checks(cfg(str(tmp_path / "mqttbuffer" / "buffer.db")), env)
    assert check.mark == doctor.OK


def test_connect_packets_for_both_protocols():
    assert mqttprobe.connect_packet("d", "3.1.1", keepalive=30) == (
        b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x1e\x00\x01d")
    assert mqttprobe.connect_packet("d", "5", "u", "p", keepalive=30) == (
        b"\x10\x14\x00\x04MQTT\x05\xc2\x00\x1e\x00\x00\x01d\x00\x01u\x00\x01p")


def test_subscribe_packet_asks_qos_1():
    assert mqttprobe.subscribe_packet(1, ["a/#"], "3.1.1") == b"\x82\x08\x00\x01\x00\x03a/#\x01"
    assert mqttprobe.subscribe_packet(1, ["a/#"], "5") == b"\x82\x09\x00\x01\x00\x00\x03a/#\x01"
