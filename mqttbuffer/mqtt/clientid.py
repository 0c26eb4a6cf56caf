"""The MQTT client id kept in the state directory when the config sets none.

A fixed client id is what makes the broker keep our session (and queue messages) while the
daemon is down, so a generated one is written once, atomically, and reused on every start.
"""

import os
import socket


def load_or_create_client_id(path):
    try:
        with open(path, encoding="utf-8") as f:
            existing = f.read().strip()
        if existing:
            return existing
    except FileNotFoundError:
        pass
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-_")[:32] or "host"
    client_id = f"mqttbuffer-{host}-{os.urandom(4).hex()}"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(client_id + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return client_id
