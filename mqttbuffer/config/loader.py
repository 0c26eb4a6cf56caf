"""The configuration: its schema, loading from YAML or JSON, defaults, and redacted dumps.

Every problem becomes a ConfigError whose text is one line, ``FILE: dotted.key: reason``; the
command line turns it into exit code 78 (EX_CONFIG), which systemd units keep from restarting.
"""

import difflib
import json
import os
import re
import types

import yaml

from mqttbuffer.config import validators as v
from mqttbuffer.config.errors import ConfigError
from mqttbuffer.config.secrets import SECRETS, resolve_secrets
from mqttbuffer.delivery import apiheaders, wire
from mqttbuffer.logs import REDACTED
from mqttbuffer.supervisor.metrics import parse_listen

SECRET_KEYS = {(section, key) for section, key, _, _ in SECRETS}
URL_KEYS = {("mqtt", "broker"), ("api", "url")}

REQUIRED = object()
HOUR, DAY = 3600.0, 86400.0
# AF_UNIX addresses hold 108 bytes with the terminating NUL.
MAX_SOCKET_PATH = 107


def _valid_listen(value):
    """metrics.listen: "" (off) or HOST:PORT."""
    value = v.valid_string(value)
    if value:
        parse_listen(value)
    return value


def _valid_qos(value):
    if value == 2 and not isinstance(value, bool):
        raise ValueError(
            "QoS 2 cannot be made crash-safe (the broker is told PUBREC before the message reaches"
            " disk), so mqttbuffer subscribes with QoS 1 at most; use 1, got 2"
        )
    return v.int_range(0, 1)(value)


_TLS = {
    "ca_file": ("", v.valid_string),
    "cert_file": ("", v.valid_string),
    "key_file": ("", v.valid_string),
    "insecure": (False, v.valid_bool),
}

# section -> key -> (default, validator); a nested dict is a sub-section.
SCHEMA = {
    "mqtt": {
        "broker": ("tcp://127.0.0.1:1883", v.valid_broker_url),
        "client_id": ("", v.valid_string),
        "username": ("", v.valid_string),
        "password": ("", v.valid_string),
        "password_file": ("", v.valid_string),
        "reconnect_interval": (5.0, v.float_range(0, HOUR, above=True)),
        "max_reconnect_interval": (60.0, v.float_range(0, HOUR, above=True)),
        "qos": (1, _valid_qos),
        "protocol": ("auto", v.one_of("auto", "5", "3.1.1", aliases={"5.0": "5", "311": "3.1.1", "3": "3.1.1"})),
        "connect_timeout": (10.0, v.float_range(0, HOUR, above=True)),
        "max_inflight_bytes": (8 * 1024 * 1024, v.int_range(64 * 1024, 2**31)),
        "keepalive": (60, v.int_range(5, 65535)),
        "session_expiry": (7 * 24 * 3600, v.int_range(0, 0xFFFFFFFF)),
        "receive_maximum": (1000, v.int_range(1, 65535)),
        "tls": _TLS,
    },
    "api": {
        "url": (REQUIRED, v.valid_http_url),
        "key": ("", v.valid_string),
        "key_file": ("", v.valid_string),
        "timeout": (30.0, v.float_range(0, HOUR, above=True)),
        "max_retry_after": (300.0, v.float_range(0, DAY)),
        "max_refused_backoff": (300.0, v.float_range(0, DAY, above=True)),
        "headers": ({}, apiheaders.valid_headers),
        "fields": ({}, wire.valid_fields),
        "constants": ({}, wire.valid_constants),
        "duplicate_is_delivered": (True, v.valid_bool),
    },
    "buffer": {
        "max_size": (1_000_000, v.int_range(1, 1_000_000_000)),
        "max_bytes": (64 * 1024 * 1024, v.int_range(1024, 2**40)),
        "overflow": ("drop_oldest", v.one_of("drop_oldest", "block")),
        "persist_file": ("", v.valid_string),
        "flush_interval": (1.0, v.float_range(0, HOUR, above=True)),
        "max_retries": (3, v.int_range(0, 1_000_000)),
        "cleanup_interval": (3600.0, v.float_range(0.1, 7 * DAY)),
        "message_retention_days": (7.0, v.float_range(0, 3650, above=True)),
        "batch_size": (500, v.int_range(1, 10000)),
        "batch_bytes": (1024 * 1024, v.int_range(1024, 64 * 1024 * 1024)),
        "commit_interval": (0.1, v.float_range(0, 10)),
        "dead_letter_retention_days": (7.0, v.float_range(0, 3650, above=True)),
        "dead_letter_max_size": (10_000, v.int_range(0, 100_000_000)),
    },
    "circuit_breaker": {
        "max_failures": (5, v.int_range(1, 1_000_000)),
        "timeout": (30.0, v.float_range(0, DAY, above=True)),
    },
    "topics": (["#"], v.list_of(v.valid_topic_filter)),
    "logging": {
        "level": ("info", v.one_of("debug", "info", "warning", "error", aliases={"warn": "warning"})),
        "stats_interval": (30.0, v.float_range(0, DAY)),
    },
    "control": {
        "socket": ("", v.valid_string),
    },
    "metrics": {
        "listen": ("", _valid_listen),
    },
    "limits": {
        "ingestor_memory_mb": (128.0, v.float_range(0, 65536)),
        "persister_memory_mb": (128.0, v.float_range(0, 65536)),
        "forwarder_memory_mb": (128.0, v.float_range(0, 65536)),
        "memory_check_interval": (5.0, v.float_range(0.1, HOUR)),
        "heartbeat_timeout": (30.0, v.float_range(1, HOUR)),
    },
}


class Section(types.SimpleNamespace):
    """A config section: attribute access to its validated keys."""


class Config(Section):
    """The whole validated config; ``source`` is the file it came from."""

    def to_dict(self, redact=True):
        """The effective config as plain data, secrets replaced by ``***`` unless redact is False."""

        def plain(section, path):
            out = {}
            for key, value in vars(section).items():
                if key in ("source", "warnings"):
                    continue
                if isinstance(value, Section):
                    out[key] = plain(value, path + (key,))
                elif redact and (path + (key,)) in SECRET_KEYS and value:
                    out[key] = REDACTED
                elif redact and (path + (key,)) in URL_KEYS:
                    out[key] = v.redact_url(value)
                elif redact and (path + (key,)) == ("api", "headers"):
                    out[key] = apiheaders.redacted(value)
                else:
                    out[key] = value
            return out

        return plain(self, ())

    def secrets(self):
        """The secret values set in this config, for log redaction."""
        keys = [getattr(getattr(self, section), key) for section, key, _, _ in SECRETS]
        return [s for s in (*keys, *v.url_secrets(self.api.url), *apiheaders.secret_values(self.api.headers)) if s]


def _strip_json_comments(text):
    """Remove // line comments that stand outside strings, so the Go predecessor's annotated config.json loads."""
    token = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*')
    return token.sub(lambda m: m.group(0) if m.group(0).startswith('"') else "", text)


class _DuplicateKey(ValueError):
    pass


def _unique_pairs(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    keeps the last one silently, so a repeated section would replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _parse(path, text):
    try:
        if path.lower().endswith(".json"):
            return json.loads(_strip_json_comments(text), object_pairs_hook=_unique_pairs)
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise ConfigError(path, None, f"not valid JSON: duplicate key {exc.args[0]!r}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(path, None, f"line {exc.lineno}: not valid JSON: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, None, f"{where}not valid YAML: {problem}") from None


def _unknown(path, dotted_parent, key, known):
    dotted = f"{dotted_parent}.{key}" if dotted_parent else str(key)
    close = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(path, dotted, f"unknown key{hint}")


def _build(path, schema, raw, dotted_parent, cls):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, dotted_parent or None, f"expected a mapping of keys, got {raw!r}")
    for key in raw:
        if key not in schema:
            raise _unknown(path, dotted_parent, key, schema)
    values = {}
    for key, spec in schema.items():
        dotted = f"{dotted_parent}.{key}" if dotted_parent else key
        if isinstance(spec, dict):
            values[key] = _build(path, spec, raw.get(key), dotted, Section)
            continue
        default, validator = spec
        if key not in raw:
            if default is REQUIRED:
                raise ConfigError(path, dotted, "required, but missing")
            values[key] = list(default) if isinstance(default, list) else default
            continue
        try:
            values[key] = validator(raw[key])
        except ValueError as exc:
            raise ConfigError(path, dotted, str(exc)) from None
    return cls(**values)


def _default_store(environ):
    if environ.get("KVMD_PST_DATA"):
        return os.path.join(environ["KVMD_PST_DATA"], "mqttbuffer", "buffer.db")
    if environ.get("STATE_DIRECTORY"):
        return os.path.join(environ["STATE_DIRECTORY"].split(":")[0], "buffer.db")
    return "/var/lib/mqttbuffer/buffer.db"


def _check_relations(path, cfg):
    try:
        wire.check_shape(cfg.api.fields, cfg.api.constants)
    except ValueError as exc:
        raise ConfigError(path, "api.constants", str(exc)) from None
    if cfg.mqtt.max_reconnect_interval < cfg.mqtt.reconnect_interval:
        raise ConfigError(
            path,
            "mqtt.max_reconnect_interval",
            f"expected a number >= mqtt.reconnect_interval ({cfg.mqtt.reconnect_interval:g}),"
            f" got {cfg.mqtt.max_reconnect_interval:g}",
        )
    tls = cfg.mqtt.tls
    if tls.key_file and not tls.cert_file:
        raise ConfigError(path, "mqtt.tls.key_file", "needs mqtt.tls.cert_file as well")
    for key in ("ca_file", "cert_file", "key_file"):
        name = getattr(tls, key)
        if name and not os.access(name, os.R_OK):
            raise ConfigError(path, f"mqtt.tls.{key}", f"expected a readable file, got {name!r}")


def load_config(path, environ=None):
    """Read, validate and complete the config at ``path``; raise ConfigError on any problem."""
    environ = os.environ if environ is None else environ
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    cfg = _build(path, SCHEMA, _parse(path, text), "", Config)
    cfg.source = path
    _check_relations(path, cfg)
    cfg.warnings = resolve_secrets(path, cfg, environ)
    _check_secrets(path, cfg)
    cfg.buffer.persist_file = os.path.abspath(cfg.buffer.persist_file or _default_store(environ))
    if not cfg.control.socket:
        runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        cfg.control.socket = os.path.join(runtime or os.path.dirname(cfg.buffer.persist_file), "control.sock")
    cfg.control.socket = os.path.abspath(cfg.control.socket)
    if len(os.fsencode(cfg.control.socket)) > MAX_SOCKET_PATH:
        raise ConfigError(path, "control.socket", f"expected a path of at most {MAX_SOCKET_PATH} bytes"
                          f" (the limit of a Unix socket address), got {cfg.control.socket!r}")
    return cfg


def _check_secrets(path, cfg):
    # After resolving: a key read from a file or the environment is checked too.
    for section, key in sorted(SECRET_KEYS):
        try:
            v.valid_no_control(getattr(getattr(cfg, section), key))
        except ValueError as exc:
            raise ConfigError(path, f"{section}.{key}", str(exc)) from None


def check_writable_paths(cfg):
    """Raise ConfigError unless the daemon can create its control socket (run and --check only:
    mqttbufferctl reads the same config as another user)."""
    existing = os.path.dirname(cfg.control.socket)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        problem = f"{existing!r} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing!r} is not writable for this user"
    else:
        return
    raise ConfigError(cfg.source, "control.socket", f"cannot create {cfg.control.socket!r}: {problem}")
