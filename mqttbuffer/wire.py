"""The request body sent to the API: a JSON array of message objects, oldest first.

``payload`` is the JSON value when the payload is UTF-8 JSON, else the UTF-8 string; bytes that
are not UTF-8 go as base64 with ``"payload_encoding": "base64"``. A JSON payload is checked with
the parser but copied into the body as the device sent it, not parsed and dumped again (dumping
and date formatting were an eighth of the forwarder's CPU at 1,000 msg/s), which also keeps
numbers exactly as sent (``1e400`` would otherwise come back as ``Infinity``, which is not JSON).
"""

import base64
import functools
import json
import math
import time


def _reject_constant(name):
    # NaN and Infinity parse in Python but are not JSON: send such payloads as strings.
    raise ValueError(name)


def payload_json(payload):
    """(the payload as JSON bytes for the body, True if it had to be base64-encoded)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return b'"' + base64.b64encode(payload) + b'"', True
    try:
        json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return json.dumps(text).encode("ascii"), False
    return payload, False


def iso_utc(epoch):
    """2026-11-26T22:44:34.123Z for an epoch time."""
    fraction, seconds = math.modf(epoch)
    micros = round(fraction * 1_000_000)  # as datetime.fromtimestamp rounds
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    return f"{_iso_second(int(seconds))}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=64)
def _iso_second(seconds):
    # The messages of one batch mostly share their second; formatting a datetime per message was
    # a visible share of the forwarder's CPU.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def message_json(msg_id, topic, payload, qos, retain, received_at):
    """One message object of the body, as bytes."""
    value, base64_encoded = payload_json(payload)
    head = (f'{{"id":{json.dumps(msg_id)},"topic":{json.dumps(topic)},"payload":').encode("ascii")
    tail = (f',"qos":{int(qos)},"retain":{"true" if retain else "false"},'
            f'"received_at":"{iso_utc(received_at)}"'
            + (',"payload_encoding":"base64"}' if base64_encoded else "}")).encode("ascii")
    return head + value + tail


def encode_body(messages):
    """The request body for messages given as (id, topic, payload, qos, retain, received_at)."""
    return b"[" + b",".join(message_json(*m) for m in messages) + b"]"
