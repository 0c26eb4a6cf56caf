"""Config loading: defaults, the Go predecessor's file, and one-line errors that name the key."""

import json

import pytest

from mqttbuffer.config import validators as v
from mqttbuffer.config.loader import ConfigError, load_config

# The Go predecessor's config.json in shape, with placeholders for its address and credentials.
SEED_SHAPED = """{
  "mqtt": {
    "broker": "tcp://broker.example:1883",     // MQTT broker URL
    "client_id": "pikvm-batch-client",        // Unique client identifier
    "username": "sensors",                    // MQTT username
    "password": "example-password",           // MQTT password
    "reconnect_interval": 5,                  // Reconnect delay (seconds)
    "max_reconnect_interval": 60              // Max reconnect delay (seconds)
  },
  "api": {
    "url": "https://your-api.com/endpoint",   // API endpoint URL
    "key": "your-api-key",                    // API authentication key
    "timeout": 30                             // HTTP timeout (seconds)
  },
  "buffer": {
    "max_size": 1000,                         // Max messages in buffer
    "persist_file": "/tmp/mqtt-buffer.json",  // Storage file path
    "flush_interval": 10,                     // API flush interval (seconds)
    "max_retries": 3,                         // Max retry attempts per message
    "cleanup_interval": 3600,                 // Cleanup old data (seconds)
    "message_retention_days": 1               // Message retention period
  },
  "circuit_breaker": {
    "max_failures": 5,                        // Failures before opening circuit
    "timeout": 30                             // Circuit open duration (seconds)
  },
  "topics": [
    "#"                                       // MQTT topics to subscribe to
  ],
  "logging": {
    "level": "info",                          // Log level (debug, info, warn, error)
    "stats_interval": 30                      // Statistics logging interval (seconds)
  }
}
"""


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text", [
    SEED_SHAPED,
    "\n".join(line.split("  //")[0] for line in SEED_SHAPED.splitlines()),
], ids=["with-comments", "without-comments"])
def test_go_predecessor_config_loads_with_and_without_comments(tmp_path, text):
    cfg = load_config(write(tmp_path, text, "config.json"), environ={})
    assert cfg.mqtt.broker == "tcp://broker.example:1883"
    assert cfg.api.url == "https://your-api.com/endpoint"  # the "//" inside a string is kept
    assert cfg.buffer.flush_interval == 10 and cfg.buffer.max_size == 1000
    assert cfg.topics == ["#"] and cfg.logging.level == "info"


def test_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "api: {url: 'http://127.0.0.1:9/x'}\n"), environ={})
    assert cfg.mqtt.broker == "tcp://127.0.0.1:1883"
    assert cfg.mqtt.qos == 1 and cfg.mqtt.protocol == "auto"
    assert cfg.buffer.batch_size == 500
    assert cfg.buffer.persist_file == "/var/lib/mqttbuffer/buffer.db"
    assert cfg.control.socket == "/var/lib/mqttbuffer/control.sock"
    assert cfg.topics == ["#"]


def test_store_goes_to_pikvm_pst_when_persist_file_is_unset(tmp_path):
    cfg = load_config(write(tmp_path, "api: {url: 'http://127.0.0.1:9/x'}\n"),
                      environ={"KVMD_PST_DATA": "/var/lib/kvmd/pst/data", "RUNTIME_DIRECTORY": "/run/mqttbuffer"})
    assert cfg.buffer.persist_file == "/var/lib/kvmd/pst/data/mqttbuffer/buffer.db"
    assert cfg.control.socket == "/run/mqttbuffer/control.sock"


@pytest.mark.parametrize("text, key, words", [
    ("api: {url: 'http://127.0.0.1:9/x'}\nbuffer: {flush_intervall: 3}\n", "buffer.flush_intervall",
     "did you mean 'flush_interval'"),
    ("api: {url: 'http://127.0.0.1:9/x'}\nbuffer: {flush_interval: soon}\n", "buffer.flush_interval",
     "expected a number > 0 and <= 3600, got 'soon'"),
    ("mqtt: {broker: 'tcp://127.0.0.1:1883'}\n", "api.url", "required"),
    ("api: {url: 'http://127.0.0.1:9/x'}\nmqtt: {qos: 2}\n", "mqtt.qos", "crash-safe"),
    ("api: {url: 'http://127.0.0.1:9/x'}\nmqtt: {broker: 'udp://127.0.0.1'}\n", "mqtt.broker", "tcp://"),
    ("api: {url: 'ftp://127.0.0.1/x'}\n", "api.url", "http://"),
    ("api: {url: 'http://127.0.0.1:9/x'}\ntopics: ['a/#/b']\n", "topics", "'#' only"),
    ("api: {url: 'http://127.0.0.1:9/x'}\nmqtt: {protocol: '4'}\n", "mqtt.protocol", "'3.1.1'"),
    ("api: {url: 'http://127.0.0.1:9/x'}\nmqtt: {reconnect_interval: 10, max_reconnect_interval: 5}\n",
     "mqtt.max_reconnect_interval", ">= mqtt.reconnect_interval"),
    ("api: {url: 'http://127.0.0.1:9/x'}\nmqtt: {tls: {ca_file: /nonexistent/ca.pem}}\n", "mqtt.tls.ca_file",
     "readable file"),
    ("api: {url: 'http://127.0.0.1:9/x'}\nbatch_size: 5\n", "batch_size", "unknown key"),
    ("api: {url: 'http://127.0.0.1:9/x'}\nbuffer: {batch_size: true}\n", "buffer.batch_size", "got True"),
])
def test_errors_name_the_dotted_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    line = str(info.value)
    assert line.startswith(f"{path}: {key}: ")
    assert words in line
    assert "\n" not in line


def test_unreadable_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"), environ={})
    with pytest.raises(ConfigError, match="line 2: not valid JSON"):
        load_config(write(tmp_path, '{"api":\n ]', "bad.json"), environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "api: [\n"), environ={})


def test_check_dump_redacts_secrets(tmp_path):
    cfg = load_config(write(tmp_path, json.dumps({
        "api": {"url": "http://127.0.0.1:9/x", "key": "k-123"},
        "mqtt": {"username": "u", "password": "p-456"}})), environ={})
    dumped = json.dumps(cfg.to_dict(redact=True))
    assert "k-123" not in dumped and "p-456" not in dumped and '"***"' in dumped
    assert sorted(cfg.secrets()) == ["k-123", "p-456"]


VALIDATOR_CASES = [
    ("float_range(0, 10, above=True)", v.float_range(0, 10, above=True), [0.1, 3, 10],
     [0, -1, 10.5, "1", True, float("nan"), float("inf")]),
    ("float_range(0, 10)", v.float_range(0, 10), [0, 2.5], [-0.1, None, float("-inf")]),
    ("int_range(1, 10)", v.int_range(1, 10), [1, 10], [0, 11, 1.5, False]),
    ("valid_broker_url", v.valid_broker_url, ["tcp://h", "mqtts://h:8883", "ws://h/mqtt", "wss://h"],
     ["h:1883", "tcp://", "tcp://h:99999"]),
    ("valid_topic_filter", v.valid_topic_filter, ["#", "a/+/b", "a/#", "+"], ["", "a#", "a/#/b", "a+/b"]),
]


@pytest.mark.parametrize("validator, value", [
    pytest.param(validator, value, id=f"{name}-{value!r}") for name, validator, good, _ in VALIDATOR_CASES
    for value in good])
def test_validators_accept(validator, value):
    validator(value)


@pytest.mark.parametrize("validator, value", [
    pytest.param(validator, value, id=f"{name}-{value!r}") for name, validator, _, bad in VALIDATOR_CASES
    for value in bad])
def test_validators_refuse(validator, value):
    with pytest.raises(ValueError):
        validator(value)


def test_broker_url_parts():
    assert v.parse_broker_url("mqtts://broker.example") == ("tcp", True, "broker.example", 8883, "/mqtt")
    assert v.parse_broker_url("ws://broker.example:9001/ws") == ("websockets", False, "broker.example", 9001, "/ws")
    assert v.parse_broker_url("tcp://127.0.0.1") == ("tcp", False, "127.0.0.1", 1883, "/mqtt")
