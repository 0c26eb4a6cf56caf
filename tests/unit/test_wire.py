"""The request body: what the API receives for each kind of payload, and the field mapping."""

import datetime
import json

import pytest

from mqttbuffer.delivery.wire import BodyShape, check_shape, encode_body, iso_utc, valid_constants, valid_fields

T = 1_764_196_274.123456  # 2025-11-26T22:31:14.123Z


def body_of(*payloads, topic="tele/plug1/SENSOR", shape=None):
    rows = [(f"id{n}", topic, p, 1, 0, T) for n, p in enumerate(payloads)]
    return json.loads((shape or BodyShape()).encode(rows))


def test_json_payloads_arrive_as_json_values():
    (obj,) = body_of(b' {"Power": 12, "big": 1e400, "n": 12345678901234567890} ')
    assert obj == {"id": "id0", "topic": "tele/plug1/SENSOR",
                   "payload": {"Power": 12, "big": float("inf"), "n": 12345678901234567890},
                   "qos": 1, "retain": False, "received_at": "2025-11-26T22:31:14.123Z",
                   "payload_encoding": "json"}
    assert b"1e400" in encode_body([("i", "t", b"[1e400]", 1, 1, T)]), "numbers are kept as sent"


def test_other_payloads_arrive_as_strings_or_base64():
    text, not_json, nan, empty, binary = body_of("ünïcode".encode(), b"{oops", b"NaN", b"", b"\xff\x00\x01")
    assert text["payload"] == "ünïcode" and text["payload_encoding"] == "text"
    assert not_json["payload"] == "{oops" and nan["payload"] == "NaN" and empty["payload"] == ""
    assert binary["payload"] == "/wAB" and binary["payload_encoding"] == "base64"


def test_every_object_of_a_body_has_the_same_keys():
    body = body_of(b'{"a": 1}', b"\xff", b"plain", b"[1,2]", b"\x00", b"3")
    assert len({tuple(obj) for obj in body}) == 1


@pytest.mark.parametrize("payload, encoding", [
    (b"[" * 1000 + b"]" * 1000, "text"),         # deeper than Python's recursion limit
    (b"[" * 100_000, "text"),
    (b"1" * 5000, "text"),                        # longer than Python converts to int
    (b"1e" + b"9" * 2000, "text"),
    (b'"\\ud800"', "text"),                       # a lone surrogate: jsonb refuses it
    (b'"\\udc00x"', "text"),
    (b'{"k": "\\u0000"}', "text"),                # jsonb cannot hold U+0000
    (b'"\\ud83d\\ude00"', "json"),                # a proper pair is fine
    (b"text with \x00 inside", "base64"),         # nor can text columns
    (b'{"deep": ' * 50 + b"1" + b"}" * 50, "json"),
])
def test_payloads_postgresql_would_refuse_go_as_text_or_base64_and_never_raise(payload, encoding):
    (obj,) = body_of(payload)
    assert obj["payload_encoding"] == encoding
    if encoding == "text":
        assert obj["payload"] == payload.decode()


def test_topics_and_ids_are_escaped():
    (obj,) = body_of(b"1", topic='a/"quoted"/\\/ü')
    assert obj["topic"] == 'a/"quoted"/\\/ü' and obj["payload"] == 1


def test_fields_can_be_renamed_omitted_and_constants_added():
    shape = BodyShape(valid_fields({"topic": "subject", "qos": None, "retain": None, "payload_encoding": None,
                                    "received_at": "ts"}),
                      valid_constants({"device": "pikvm-1", "site": 3}))
    (obj,) = body_of(b'{"a": 1}', shape=shape)
    assert obj == {"id": "id0", "subject": "tele/plug1/SENSOR", "payload": {"a": 1},
                   "ts": "2025-11-26T22:31:14.123Z", "device": "pikvm-1", "site": 3}
    (bare,) = body_of(b"1", shape=BodyShape({f: None for f in ("id", "topic", "payload", "qos", "retain",
                                                              "received_at", "payload_encoding")}, {"k": 1}))
    assert bare == {"k": 1}


@pytest.mark.parametrize("fields, problem", [
    ({"topik": "t"}, "did you mean 'topic'"),
    ({"topic": ""}, "expected a column name"),
    ({"topic": 3}, "expected a column name"),
    ({"topic": "payload"}, "each column once"),
    ({"topic": "a\nb"}, "control characters"),
    (["topic"], "expected a mapping"),
])
def test_bad_field_mappings_are_refused(fields, problem):
    with pytest.raises(ValueError, match=problem):
        valid_fields(fields)


def test_constants_must_be_scalars_on_columns_of_their_own():
    with pytest.raises(ValueError, match="expected a string, number"):
        valid_constants({"device": {"nested": 1}})
    with pytest.raises(ValueError, match="already a wire field"):
        check_shape({}, {"topic": "x"})
    check_shape({"topic": "subject"}, {"topic": "x"})


@pytest.mark.parametrize("epoch", [0.0, T, 1_700_000_000.9999996, 1_571_073_873.4229994, 1_700_000_059.5])
def test_iso_utc_matches_datetime(epoch):
    expected = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    assert iso_utc(epoch) == expected.strftime("%Y-%m-%dT%H:%M:%S.") + f"{expected.microsecond // 1000:03d}Z"
