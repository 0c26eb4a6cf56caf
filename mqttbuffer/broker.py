"""The MQTT client: one paho client built from the ``mqtt`` config, for paho-mqtt 1.6.1 and 2.x.

Both versions are made to hold PUBACKs until the caller says the message is on disk: 2.x through
``manual_ack=True``; 1.6.1, which sends the PUBACK as soon as on_message returns, through a
subclass that swallows that automatic ``_send_puback`` (frozen in the last 1.x release).
``ack_all`` then queues the PUBACKs of a whole committed batch as one write through paho's
``_packet_queue`` (the same internal in both versions): paho's own ``ack`` queues, wakes its
thread through a socket pair and sends once per message, about a fifth of the ingestor's CPU at
1,000 msg/s. The bytes are what paho sends for a successful QoS 1 PUBACK in MQTT 3.1.1 and 5.
Callbacks are given in one shape for both versions.
"""

import logging
import ssl
import struct

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqttbuffer.validators import parse_broker_url

log = logging.getLogger(__name__)

PAHO_2 = hasattr(mqtt, "CallbackAPIVersion")


_PUBACK = struct.Struct("!BBH")  # packet type, remaining length 2, packet id


class _DeferredAckClient(mqtt.Client):
    """paho 1.6.1 client that sends no automatic QoS 1 PUBACK."""

    def _send_puback(self, mid):
        return mqtt.MQTT_ERR_SUCCESS


def _refused(rc):
    """True for a failed CONNACK or SUBACK: paho gives an int (1.x, MQTT 3.1.1) or a reason code."""
    if hasattr(rc, "value"):
        return rc.value >= 0x80
    return rc != 0


def _reason(rc, describe_int):
    return describe_int(rc) if isinstance(rc, int) else str(rc)


class BrokerClient:
    """A connection to the broker that re-subscribes on every connect and defers PUBACKs.

    ``on_message(msg)``, ``on_connected()`` and ``on_disconnected(reason)`` are called on paho's
    network thread.
    """

    def __init__(self, mqtt_cfg, client_id, topics, on_message, on_connected, on_disconnected):
        self._cfg = mqtt_cfg
        self._topics = topics
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        transport, tls, self.host, self.port, path = parse_broker_url(mqtt_cfg.broker)
        self._v5 = mqtt_cfg.protocol == "5"
        protocol = mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311
        clean_session = None if self._v5 else False
        if PAHO_2:
            self.client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                protocol=protocol, transport=transport, manual_ack=True,
            )
        else:
            self.client = _DeferredAckClient(
                client_id=client_id, clean_session=clean_session, protocol=protocol, transport=transport,
            )
        if transport == "websockets":
            self.client.ws_set_options(path=path)
        if tls:
            self._set_tls(mqtt_cfg.tls)
        if mqtt_cfg.username:
            self.client.username_pw_set(mqtt_cfg.username, mqtt_cfg.password or None)
        self.client.reconnect_delay_set(
            min_delay=mqtt_cfg.reconnect_interval, max_delay=mqtt_cfg.max_reconnect_interval
        )
        self.client.on_connect = self._handle_connect
        self.client.on_disconnect = self._handle_disconnect
        self.client.on_message = self._handle_message
        self.client.on_subscribe = self._handle_subscribe

    def _set_tls(self, tls_cfg):
        self.client.tls_set(
            ca_certs=tls_cfg.ca_file or None,
            certfile=tls_cfg.cert_file or None,
            keyfile=tls_cfg.key_file or None,
            cert_reqs=ssl.CERT_NONE if tls_cfg.insecure else ssl.CERT_REQUIRED,
        )
        if tls_cfg.insecure:
            self.client.tls_insecure_set(True)

    def start(self):
        """Connect in the background (retrying until the broker answers) and start paho's thread."""
        kwargs = {}
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._cfg.session_expiry
            props.ReceiveMaximum = self._cfg.receive_maximum
            kwargs = {"clean_start": False, "properties": props}
        self.client.connect_async(self.host, self.port, keepalive=self._cfg.keepalive, **kwargs)
        self.client.loop_start()

    def ack_all(self, mids):
        """PUBACK QoS 1 messages by packet id, in the order given, with one queued write."""
        if mids:
            packet = b"".join([_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids])
            self.client._packet_queue(mqtt.PUBACK, packet, 0, 0)

    def stop(self):
        """Send what is queued (acks included), disconnect cleanly and join paho's thread."""
        self.client.disconnect()
        self.client.loop_stop()

    def _handle_connect(self, client, userdata, flags, rc, properties=None):
        if _refused(rc):
            log.warning("MQTT connection to %s:%s refused: %s", self.host, self.port, _reason(rc, mqtt.connack_string))
            return
        present = flags.get("session present") if isinstance(flags, dict) else getattr(flags, "session_present", None)
        log.info("Connected to MQTT broker %s:%s (session present: %s)", self.host, self.port, bool(present))
        self._on_connected()
        client.subscribe([(topic, self._cfg.qos) for topic in self._topics])

    def _handle_disconnect(self, client, userdata, *args):
        # 1.x: (rc) or (rc, properties); 2.x: (flags, reason_code, properties)
        rc = args[1] if PAHO_2 else args[0]
        self._on_disconnected(_reason(rc, mqtt.error_string))

    def _handle_subscribe(self, client, userdata, mid, granted, properties=None):
        failed = [t for t, g in zip(self._topics, granted, strict=False) if getattr(g, "value", g) >= 0x80]
        if failed:
            log.error("Broker refused subscription to %s", ", ".join(failed))
        else:
            log.info("Subscribed to %s", ", ".join(self._topics))

    def _handle_message(self, client, userdata, msg):
        self._on_message(msg)
