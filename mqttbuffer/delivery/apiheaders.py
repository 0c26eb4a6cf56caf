"""The request headers sent to the API: the defaults, ``api.headers`` on top, secrets among them.

Defaults: ``Content-Type: application/json``, ``User-Agent: mqttbuffer/<version>``, and with a key
``Authorization: Bearer <api.key>`` plus ``apikey: <api.key>`` (Supabase wants both). A header in
``api.headers`` replaces the default of the same name (names compare case-insensitively). The
value of a header whose name says it carries a credential is a secret: redacted in dumps and logs
like ``api.key``.
"""

import re

from mqttbuffer import __version__
from mqttbuffer.logs import REDACTED

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Set by the HTTP client from the body and the URL; a config value would contradict it.
RESERVED = {"content-length", "host", "transfer-encoding", "connection"}
_SECRET_NAME = re.compile(r"auth|key|token|secret|passw|cookie|signature|credential", re.IGNORECASE)


def is_secret(name):
    return bool(_SECRET_NAME.search(name))


def valid_headers(value):
    """api.headers: a mapping of header names to string values."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of header names to values, got {value!r}")
    seen = set()
    for name, text in value.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise ValueError(f"expected header names of letters, digits and -, got {name!r}")
        if name.lower() in RESERVED:
            raise ValueError(f"{name}: set by mqttbuffer itself, not by api.headers")
        if name.lower() in seen:
            raise ValueError(f"{name}: given twice (header names are case-insensitive)")
        seen.add(name.lower())
        if isinstance(text, bool) or not isinstance(text, (str, int, float)):
            raise ValueError(f"{name}: expected a string value, got {'***' if is_secret(name) else repr(text)}")
        if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in str(text)):
            raise ValueError(f"{name}: expected no control characters (newline, ...) in the value")
    return {name: str(text) for name, text in value.items()}


def request_headers(api_key, extra):
    """The headers of every request."""
    headers = {"Content-Type": "application/json", "User-Agent": f"mqttbuffer/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
        headers["apikey"] = api_key
    for name, text in extra.items():
        for old in [n for n in headers if n.lower() == name.lower()]:
            del headers[old]
        headers[name] = text
    return headers


def secret_values(extra):
    """The values of api.headers that are credentials, for log redaction."""
    found = []
    for name, text in extra.items():
        if is_secret(name) and text:
            found.append(text)
            # "Bearer abc": the token alone is as secret as the whole value.
            found.extend(part for part in text.split() if len(part) >= 8)
    return found


def redacted(extra):
    return {name: REDACTED if is_secret(name) and text else text for name, text in extra.items()}


def skipping_duplicates(headers):
    """The headers with PostgREST's ``Prefer: resolution=ignore-duplicates`` added (other APIs
    ignore a preference they do not know, RFC 7240)."""
    out = dict(headers)
    name = next((n for n in out if n.lower() == "prefer"), "Prefer")
    current = out.get(name, "")
    if "resolution=" not in current:
        out[name] = f"{current}, resolution=ignore-duplicates" if current else "resolution=ignore-duplicates"
    return out
