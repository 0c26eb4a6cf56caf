"""The installed Debian package, run by hand from its files (systemd is not PID 1 in CI).

Runs only when bin/check-packages has installed the package and set MQTTBUFFER_INSTALLED=1.
"""

import os
import subprocess

import pytest

from tests.conftest import assert_all_arrived

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.environ.get("MQTTBUFFER_INSTALLED"),
                       reason="needs the installed .deb (bin/check-packages)"),
]


def test_installed_check_of_the_shipped_config():
    result = subprocess.run(["/usr/bin/mqttbuffer", "--config", "/etc/mqttbuffer/config.yaml", "--check"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "persist_file: /var/lib/mqttbuffer/buffer.db" in result.stdout


def test_installed_daemon_delivers_and_stops_cleanly(mosquitto, sink, make_daemon, publisher):
    daemon = make_daemon(mosquitto, sink)
    daemon.command = ["/usr/bin/mqttbuffer"]
    daemon.ctl_command = ["/usr/bin/mqttbufferctl"]
    daemon.start()
    accepted = publisher.publish(500, rate=500).accepted()
    assert_all_arrived(sink, accepted)
    assert daemon.status()["counters"]["delivered"] >= 500
    code, seconds = daemon.terminate()
    assert code == 0 and seconds < 10
