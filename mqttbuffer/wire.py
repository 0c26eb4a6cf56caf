"""The request body sent to the API: a JSON array of message objects, oldest first.

``payload`` is the parsed JSON value when the payload is UTF-8 JSON, else the UTF-8 string;
bytes that are not UTF-8 go as base64 with ``"payload_encoding": "base64"``.
"""

import base64
import datetime
import json


def _reject_constant(name):
    # NaN and Infinity parse in Python but are not JSON: send such payloads as strings.
    raise ValueError(name)


def decode_payload(payload):
    """Return (value, encoding or None) for a payload's bytes."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii"), "base64"
    try:
        return json.loads(text, parse_constant=_reject_constant), None
    except ValueError:
        return text, None


def iso_utc(epoch):
    """2026-11-26T22:44:34.123Z for an epoch time."""
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def message_object(msg_id, topic, payload, qos, retain, received_at):
    value, encoding = decode_payload(payload)
    obj = {
        "id": msg_id,
        "topic": topic,
        "payload": value,
        "qos": qos,
        "retain": bool(retain),
        "received_at": iso_utc(received_at),
    }
    if encoding:
        obj["payload_encoding"] = encoding
    return obj


def encode_body(messages):
    """The request body for messages given as (id, topic, payload, qos, retain, received_at)."""
    return json.dumps([message_object(*m) for m in messages], separators=(",", ":")).encode("utf-8")
