"""The request body sent to the API: a JSON array of message objects, oldest first.

Every object of a body has the same keys, whatever the payloads: PostgREST (and so Supabase)
refuses a bulk insert whose objects differ (400 PGRST102). The default object is

    {"id": ..., "topic": ..., "payload": ..., "qos": 1, "retain": false,
     "received_at": "2026-11-26T22:44:34.123Z", "payload_encoding": "json"}

``payload`` is the JSON value when the payload is UTF-8 JSON (``payload_encoding`` "json"), else
the UTF-8 string ("text"); bytes that are not UTF-8, or text holding U+0000 (which PostgreSQL
cannot store), go base64-encoded ("base64"). JSON that PostgreSQL's jsonb would refuse or that
Python cannot check safely goes as text: nesting deeper than the parser's recursion limit, a
number literal over ``MAX_NUMBER_CHARS`` characters, a ``\\u0000`` escape or a lone surrogate.

``api.fields`` renames or omits these keys (``null`` omits one) and ``api.constants`` adds
columns with a fixed value, so a body fits an existing table. A JSON payload is checked with the
parser but copied into the body as the device sent it, not parsed and dumped again (dumping and
date formatting were an eighth of the forwarder's CPU at 1,000 msg/s), which also keeps numbers
exactly as sent.
"""

import base64
import difflib
import functools
import json
import math
import re
import time

from mqttbuffer.config.validators import valid_no_control

WIRE_FIELDS = ("id", "topic", "payload", "qos", "retain", "received_at", "payload_encoding")
MAX_NUMBER_CHARS = 1000
# \u0000, a high surrogate not followed by a low one, or a low one not preceded by a high one.
_UNSTORABLE_ESCAPE = re.compile(
    r"\\u0000|\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F]")


def _reject_constant(name):
    # NaN and Infinity parse in Python but are not JSON: send such payloads as strings.
    raise ValueError(name)


def _check_number(literal):
    # Only validity matters (the payload is copied as sent): skip the conversion, cap the size.
    if len(literal) > MAX_NUMBER_CHARS:
        raise ValueError("number too long")
    return 0


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_check_number,
                            parse_float=_check_number)


def payload_json(payload):
    """(the payload as JSON bytes for the body, its encoding: "json", "text" or "base64")."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return b'"' + base64.b64encode(payload) + b'"', "base64"
    if "\x00" in text:
        return b'"' + base64.b64encode(payload) + b'"', "base64"
    try:
        _decoder.decode(text)
    except (ValueError, RecursionError):
        return json.dumps(text).encode("ascii"), "text"
    if "\\u" in text and _UNSTORABLE_ESCAPE.search(text):
        return json.dumps(text).encode("ascii"), "text"
    return payload, "json"


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


class BodyShape:
    """How messages become a body: which keys, under which names, plus constant columns."""

    def __init__(self, fields=None, constants=None):
        names = {field: field for field in WIRE_FIELDS}
        names.update(fields or {})
        self.keys = {field: json.dumps(name) + ":" for field, name in names.items() if name}
        self.constants = [f"{json.dumps(k)}:{json.dumps(v)}".encode() for k, v in (constants or {}).items()]

    def message_json(self, msg_id, topic, payload, qos, retain, received_at):
        """One message object of the body, as bytes."""
        value, encoding = payload_json(payload)
        keys = self.keys
        text = []
        if "id" in keys:
            text.append(keys["id"] + json.dumps(msg_id))
        if "topic" in keys:
            text.append(keys["topic"] + json.dumps(topic))
        out = [",".join(text).encode("ascii")] if text else []
        if "payload" in keys:
            out.append(keys["payload"].encode("ascii") + value)
        text = []
        if "qos" in keys:
            text.append(f"{keys['qos']}{int(qos)}")
        if "retain" in keys:
            text.append(f"{keys['retain']}{'true' if retain else 'false'}")
        if "received_at" in keys:
            text.append(f'{keys["received_at"]}"{iso_utc(received_at)}"')
        if "payload_encoding" in keys:
            text.append(f'{keys["payload_encoding"]}"{encoding}"')
        if text:
            out.append(",".join(text).encode("ascii"))
        return b"{" + b",".join(out + self.constants) + b"}"

    def encode(self, messages):
        """The request body for messages given as (id, topic, payload, qos, retain, received_at)."""
        return b"[" + b",".join(self.message_json(*m) for m in messages) + b"]"


DEFAULT_SHAPE = BodyShape()


def encode_body(messages):
    """The default body for messages given as (id, topic, payload, qos, retain, received_at)."""
    return DEFAULT_SHAPE.encode(messages)


def valid_fields(value):
    """api.fields: wire field -> column name, or null to leave the field out."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of wire fields to column names, got {value!r}")
    columns = {}
    for field, name in value.items():
        if field not in WIRE_FIELDS:
            close = difflib.get_close_matches(str(field), WIRE_FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(WIRE_FIELDS)})"
            raise ValueError(f"{field}: unknown wire field{hint}")
        if name is None or name is False:
            columns[field] = None
            continue
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{field}: expected a column name or null, got {name!r}")
        try:
            valid_no_control(name)
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from None
        columns[field] = name
    names = [n for n in {**{f: f for f in WIRE_FIELDS}, **columns}.values() if n]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"expected each column once, got {twice[0]!r} for two fields")
    return columns


def valid_constants(value):
    """api.constants: column -> a fixed value (string, number, true/false or null) on every object."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of column names to values, got {value!r}")
    for name, constant in value.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"expected column names as strings, got {name!r}")
        if not (constant is None or isinstance(constant, (str, bool, int))
                or (isinstance(constant, float) and math.isfinite(constant))):
            raise ValueError(f"{name}: expected a string, number, true/false or null, got {constant!r}")
    return dict(value)


def check_shape(fields, constants):
    """Raise ValueError if a constant column is also a wire field's column."""
    names = {field: field for field in WIRE_FIELDS}
    names.update(fields)
    clash = sorted(set(constants) & {n for n in names.values() if n})
    if clash:
        raise ValueError(f"{clash[0]!r} is already a wire field's column (see api.fields)")
