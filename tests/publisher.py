"""A test publisher for paho-mqtt 1.6.1 and 2.x (QoS 1 unless told otherwise) that knows what the broker took."""

import json
import time

import paho.mqtt.client as mqtt


class Publisher:
    def __init__(self, port, topic="test/data", username=None, password=None, first=0):
        """``first``: the number of the first message, so two publishers can share a sink."""
        self.topic = topic
        self.first = first
        if hasattr(mqtt, "CallbackAPIVersion"):
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        else:
            self.client = mqtt.Client()
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.infos = []
        if username:
            self.client.username_pw_set(username, password)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, count, rate=None, during=None, qos=1, payload=None):
        """Publish ``count`` messages {"n": i} (or all the same ``payload``) with ``qos``, at ``rate``
        per second if given.

        ``during(n)`` is called before message n, so a test can act in the middle of the stream.
        """
        start = time.monotonic()
        for i in range(count):
            n = self.first + len(self.infos)
            if during:
                during(n)
            if rate:
                ahead = start + i / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            body = payload if payload is not None else json.dumps({"n": n, "pad": "x" * 150})
            self.infos.append(self.client.publish(self.topic, body, qos=qos))
        return self

    def accepted(self, timeout=30):
        """The numbers of all messages the broker has acknowledged (waits for outstanding ones)."""
        deadline = time.monotonic() + timeout
        for info in self.infos:
            try:
                info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            except RuntimeError:  # paho 1.6.1: published while not connected, so not accepted
                pass
        return {self.first + i for i, info in enumerate(self.infos) if _published(info)}

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def _published(info):
    try:
        return info.is_published()
    except RuntimeError:  # paho 2.x: published while not connected, so never sent
        return False
