"""The mqttbuffer command's answers to bad configs and --check, as an operator sees them."""

import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(*args, timeout=10):
    return subprocess.run([sys.executable, "-m", "mqttbuffer", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("text, key", [
    ("api: {url: 'http://127.0.0.1:9/x'}\nmqtt: {brokr: 'tcp://127.0.0.1:1883'}\n", "mqtt.brokr"),
    ("api: {url: 'http://127.0.0.1:9/x', timeout: 'thirty'}\n", "api.timeout"),
    ("mqtt: {broker: 'tcp://127.0.0.1:1883'}\n", "api.url"),
])
def test_bad_config_exits_78_with_one_line(tmp_path, text, key):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    result = run("--config", str(path))
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}: {key}: " in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_store_that_is_not_a_database_exits_78(tmp_path):
    old = tmp_path / "mqtt-buffer.json"
    old.write_text('{"messages": []}')
    path = tmp_path / "config.yaml"
    path.write_text(f"api: {{url: 'http://127.0.0.1:9/x'}}\nbuffer: {{persist_file: '{old}'}}\n")
    result = run("--config", str(path))
    assert result.returncode == 78
    assert "buffer.persist_file" in result.stderr and "not an SQLite database" in result.stderr


def test_check_on_the_example_config(tmp_path):
    result = run("--config", "etc/config.example.yaml", "--check")
    assert result.returncode == 0, result.stderr
    assert "broker: tcp://127.0.0.1:1883" in result.stdout


def test_check_shows_no_secret(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("api: {url: 'http://127.0.0.1:9/x', key: 'api-secret-1'}\n"
                    "mqtt: {username: u, password: 'mqtt-secret-2'}\n")
    result = run("--config", str(path), "--check")
    assert result.returncode == 0
    assert "api-secret-1" not in result.stdout + result.stderr
    assert "mqtt-secret-2" not in result.stdout + result.stderr
    assert "key: '***'" in result.stdout and "password: '***'" in result.stdout
