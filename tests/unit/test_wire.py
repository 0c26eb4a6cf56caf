"""The request body: what the API receives for each kind of payload."""

import datetime
import json

from mqttbuffer.wire import encode_body, iso_utc

T = 1_764_196_274.123456  # 2025-11-26T22:31:14.123Z


def body_of(*payloads, topic="tele/plug1/SENSOR"):
    rows = [(f"id{n}", topic, p, 1, 0, T) for n, p in enumerate(payloads)]
    return json.loads(encode_body(rows))


def test_json_payloads_arrive_as_json_values():
    (obj,) = body_of(b' {"Power": 12, "big": 1e400, "n": 12345678901234567890} ')
    assert obj == {"id": "id0", "topic": "tele/plug1/SENSOR",
                   "payload": {"Power": 12, "big": float("inf"), "n": 12345678901234567890},
                   "qos": 1, "retain": False, "received_at": "2025-11-26T22:31:14.123Z"}
    assert b"1e400" in encode_body([("i", "t", b"[1e400]", 1, 1, T)]), "numbers are kept as sent"


def test_other_payloads_arrive_as_strings_or_base64():
    text, not_json, nan, empty, binary = body_of("ünïcode".encode(), b"{oops", b"NaN", b"", b"\xff\x00\x01")
    assert text["payload"] == "ünïcode" and "payload_encoding" not in text
    assert not_json["payload"] == "{oops" and nan["payload"] == "NaN" and empty["payload"] == ""
    assert binary["payload"] == "/wAB" and binary["payload_encoding"] == "base64"


def test_topics_and_ids_are_escaped():
    (obj,) = body_of(b"1", topic='a/"quoted"/\\/ü')
    assert obj["topic"] == 'a/"quoted"/\\/ü' and obj["payload"] == 1


def test_iso_utc_matches_datetime():
    for epoch in (0.0, T, 1_700_000_000.9999996, 1_571_073_873.4229994, 1_700_000_059.5):
        expected = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
        assert iso_utc(epoch) == expected.strftime("%Y-%m-%dT%H:%M:%S.") + f"{expected.microsecond // 1000:03d}Z"
