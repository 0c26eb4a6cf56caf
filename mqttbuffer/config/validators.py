"""Small named validators for config values.

Each takes the raw value and returns the normalised one, or raises ValueError whose text is the
reason shown to the operator ("expected ..., got ...").
"""

import math
import urllib.parse

BROKER_SCHEMES = {
    # scheme: (transport, tls, default port)
    "tcp": ("tcp", False, 1883),
    "mqtt": ("tcp", False, 1883),
    "ssl": ("tcp", True, 8883),
    "mqtts": ("tcp", True, 8883),
    "ws": ("websockets", False, 80),
    "wss": ("websockets", True, 443),
}


def _got(value):
    return f"got {value!r}"


def _number(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected {what}, {_got(value)}")
    return value


def float_range(low, high, above=False):
    """Validator for a finite number in [low, high], or in (low, high] when ``above``."""
    what = f"a number > {low:g} and <= {high:g}" if above else f"a number from {low:g} to {high:g}"

    def valid_float(value):
        number = _number(value, what)
        if number > high or number < low or (above and number == low):
            raise ValueError(f"expected {what}, {_got(value)}")
        return float(number)

    valid_float.__name__ = f"valid_float_{low:g}_{high:g}"
    return valid_float


def int_range(low, high=None):
    """Validator for a whole number in [low, high] (high None: no upper bound)."""
    what = f"a whole number from {low} to {high}" if high is not None else f"a whole number >= {low}"

    def valid_int(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected {what}, {_got(value)}")
        if value < low or (high is not None and value > high):
            raise ValueError(f"expected {what}, {_got(value)}")
        return value

    valid_int.__name__ = f"valid_int_{low}_{high}"
    return valid_int


def valid_bool(value):
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, {_got(value)}")
    return value


def valid_string(value):
    if not isinstance(value, str):
        raise ValueError(f"expected a string, {_got(value)}")
    return value


def valid_no_control(value):
    """A string without control characters (a secret or header with a newline breaks the request)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in valid_string(value)):
        raise ValueError("expected no control characters (newline, tab, ...)")
    return value


def valid_nonempty_string(value):
    if not valid_string(value).strip():
        raise ValueError(f"expected a non-empty string, {_got(value)}")
    return value


def one_of(*choices, aliases=None):
    """Validator for one value out of ``choices``; ``aliases`` maps other spellings to a choice."""
    aliases = aliases or {}

    def valid_choice(value):
        key = str(value).lower() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value
        if key in choices:
            return key
        if key in aliases:
            return aliases[key]
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"expected one of {listed}, {_got(value)}")

    return valid_choice


def parse_broker_url(url):
    """Split a broker URL into (transport, tls, host, port, path); raise ValueError if it is not one."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in BROKER_SCHEMES:
        names = ", ".join(f"{s}://" for s in BROKER_SCHEMES)
        raise ValueError(f"expected a URL starting with one of {names}, {_got(url)}")
    transport, tls, default_port = BROKER_SCHEMES[scheme]
    port = _port(parts, url) or default_port
    if not parts.hostname:
        raise ValueError(f"expected a host in the URL, {_got(url)}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("expected no user or password in the URL: set mqtt.username and mqtt.password"
                         f" (or mqtt.password_file) instead, got {redact_url(url)!r}")
    path = parts.path or "/mqtt"
    return transport, tls, parts.hostname, port, path


def _port(parts, url):
    """The URL's explicit port, None when it has none; 0 or > 65535 is refused, never defaulted."""
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"expected a port from 1 to 65535 in the URL, {_got(redact_url(url))}")
    return port


def redact_url(url):
    """The URL with its password and every query value replaced by ``***``, for logs and dumps."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}" if ":" in userinfo else netloc
    query = "&".join(f"{pair.split('=', 1)[0]}=***" if "=" in pair else pair
                     for pair in parts.query.split("&")) if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url):
    """The parts of a URL that may be credentials: its password and its query values."""
    parts = urllib.parse.urlsplit(url)
    found = [parts.password] if parts.password else []
    found += [value for _, value in urllib.parse.parse_qsl(parts.query) if len(value) >= 6]
    return found


def valid_broker_url(value):
    parse_broker_url(valid_no_control(valid_nonempty_string(value)))
    return value


def valid_http_url(value):
    parts = urllib.parse.urlsplit(valid_no_control(valid_nonempty_string(value)))
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, {_got(redact_url(value))}")
    _port(parts, value)
    if parts.username is not None or parts.password is not None:
        raise ValueError("expected no user or password in the URL: set api.key (or api.key_file) instead,"
                         f" got {redact_url(value)!r}")
    return value


def valid_topic_filter(value):
    """An MQTT topic filter: '#' only as the last level, '+' only as a whole level."""
    valid_nonempty_string(value)
    levels = value.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError(f"expected '#' only as the whole last level, {_got(value)}")
        if "+" in level and level != "+":
            raise ValueError(f"expected '+' only as a whole level, {_got(value)}")
    return value


def list_of(item_validator):
    def valid_list(value):
        if not isinstance(value, list) or not value:
            raise ValueError(f"expected a non-empty list, {_got(value)}")
        result = []
        for index, item in enumerate(value):
            try:
                result.append(item_validator(item))
            except ValueError as exc:
                raise ValueError(f"item {index}: {exc}") from None
        return result

    return valid_list
