"""Hostile and mistaken configs: every one is refused by --check with one line, no secret shown."""

import json
import os
import subprocess
import sys

import pytest

from mqttbuffer.config import validators as v
from mqttbuffer.config.loader import ConfigError, check_writable_paths, load_config
from mqttbuffer.logs import setup_logging

API = "api: {url: 'http://127.0.0.1:9/x'}\n"


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, key, words", [
    (API + "mqtt: {broker: 'tcp://127.0.0.1:0'}\n", "mqtt.broker", "port from 1 to 65535"),
    (API + "mqtt: {broker: 'tcp://127.0.0.1:65536'}\n", "mqtt.broker", "port from 1 to 65535"),
    ("api: {url: 'http://127.0.0.1:99999/x'}\n", "api.url", "port from 1 to 65535"),
    ("api: {url: 'https://127.0.0.1:0/x'}\n", "api.url", "port from 1 to 65535"),
    ("api: {url: 'http://127.0.0.1:9/x', timeout: .inf}\n", "api.timeout", "<= 3600"),
    ("api: {url: 'http://127.0.0.1:9/x', timeout: .nan}\n", "api.timeout", "expected a number"),
    ("api: {url: 'http://127.0.0.1:9/x', timeout: 1e300}\n", "api.timeout", "<= 3600"),
    (API + "buffer: {flush_interval: -.inf}\n", "buffer.flush_interval", "expected a number"),
    (API + "buffer: {max_size: 100000000000000000000}\n", "buffer.max_size", "from 1 to"),
    (API + "buffer: {batch_bytes: 100}\n", "buffer.batch_bytes", "from 1024 to"),
    (API + "limits: {heartbeat_timeout: 1e9}\n", "limits.heartbeat_timeout", "from 1 to 3600"),
    (API + "circuit_breaker: {timeout: .inf}\n", "circuit_breaker.timeout", "<= 86400"),
    ("api: {url: \"http://127.0.0.1:9/x\", key: \"k-1\\nX-Evil: 1\"}\n", "api.key", "control characters"),
    (API + "mqtt: {password: \"p\\r\\n\"}\n", "mqtt.password", "control characters"),
    (API + "mqtt: {broker: 'tcp://user:s3cret-pw@127.0.0.1:1883'}\n", "mqtt.broker", "mqtt.username"),
    ("api: {url: 'https://u:s3cret-pw@127.0.0.1/x'}\n", "api.url", "api.key"),
    (API + "control: {socket: '/tmp/" + "x" * 120 + "/control.sock'}\n", "control.socket", "at most 107 bytes"),
])
def test_refused_with_one_line_naming_the_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    line = str(info.value)
    assert line.startswith(f"{path}: {key}: "), line
    assert words in line and "\n" not in line
    assert "s3cret-pw" not in line


def test_secret_with_control_characters_from_a_file_is_refused(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("abc\x00def")
    with pytest.raises(ConfigError, match="api.key: expected no control"):
        load_config(write(tmp_path, f"api: {{url: 'http://127.0.0.1:9/x', key_file: '{key_file}'}}\n"), environ={})


@pytest.mark.parametrize("name, text", [
    ("dup.yaml", API + "buffer: {max_size: 5}\nbuffer: {max_size: 7}\n"),
    ("dup2.yaml", API + "buffer:\n  max_size: 5\n  max_size: 7\n"),
    ("dup.json", '{"api": {"url": "http://127.0.0.1:9/x"}, "buffer": {}, "buffer": {"max_size": 7}}'),
])
def test_duplicate_keys_are_refused(tmp_path, name, text):
    with pytest.raises(ConfigError, match="duplicate key 'buffer'|duplicate key 'max_size'"):
        load_config(write(tmp_path, text, name), environ={})


def test_yaml_merge_keys_still_work(tmp_path):
    text = API + "buffer:\n  <<: {max_size: 5, batch_size: 9}\n  max_size: 7\n"
    cfg = load_config(write(tmp_path, text), environ={})
    assert cfg.buffer.max_size == 7 and cfg.buffer.batch_size == 9


def test_url_query_tokens_are_redacted_in_dumps_and_logs(tmp_path, capsys):
    cfg = load_config(write(tmp_path, "api: {url: 'https://127.0.0.1/x?token=tok-abcdef123&v=1'}\n"), environ={})
    assert cfg.api.url.endswith("token=tok-abcdef123&v=1")  # used as given
    assert "tok-abcdef123" not in json.dumps(cfg.to_dict(redact=True))
    assert v.redact_url(cfg.api.url) == "https://127.0.0.1/x?token=***&v=***"
    setup_logging("info", cfg.secrets(), environ={})
    import logging
    try:
        raise RuntimeError(f"cannot reach {cfg.api.url}")
    except RuntimeError:
        logging.getLogger("test").exception("failed")
    err = capsys.readouterr().err
    assert "tok-abcdef123" not in err and "Traceback" in err and "token=***" in err


def test_secrets_are_redacted_in_tracebacks(tmp_path, capsys):
    setup_logging("info", ["k-very-secret"], environ={})
    import logging
    try:
        raise ValueError("header value 'Bearer k-very-secret' is invalid")
    except ValueError:
        logging.getLogger("test").exception("request failed")
    err = capsys.readouterr().err
    assert "k-very-secret" not in err and "Bearer ***" in err


def test_control_socket_where_no_directory_can_be_made(tmp_path):
    # A regular file on the way: no user, root included, can create the socket there.
    (tmp_path / "plain-file").write_text("")
    cfg = load_config(write(tmp_path, API + f"control: {{socket: '{tmp_path}/plain-file/sub/control.sock'}}\n"),
                      environ={})
    with pytest.raises(ConfigError, match="control.socket: cannot create"):
        check_writable_paths(cfg)


def test_control_socket_in_an_unwritable_directory(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    cfg = load_config(write(tmp_path, API + f"control: {{socket: '{locked}/sub/control.sock'}}\n"), environ={})
    with pytest.raises(ConfigError, match="control.socket: cannot create"):
        check_writable_paths(cfg)


def test_check_exits_78_with_one_line_and_no_secret(tmp_path):
    path = write(tmp_path, "api: {url: 'https://u:s3cret-pw@127.0.0.1:99999/x'}\n")
    result = subprocess.run([sys.executable, "-m", "mqttbuffer", "--check", "--config", path],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 78
    assert len(result.stderr.strip().splitlines()) == 1 and "api.url" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout
