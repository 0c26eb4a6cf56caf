"""The MQTT client: one paho client built from the ``mqtt`` config, for paho-mqtt 1.6.1 and 2.x.

Both versions are made to hold PUBACKs until the caller says the message is on disk: 2.x through
``manual_ack=True``; 1.6.1, which sends the PUBACK as soon as on_message returns, through a
subclass that swallows that automatic ``_send_puback`` (frozen in the last 1.x release).
``ack_all`` then queues the PUBACKs of a whole committed batch as one write through paho's
``_packet_queue`` (the same internal in both versions): paho's own ``ack`` queues, wakes its
thread through a socket pair and sends once per message, about a fifth of the ingestor's CPU at
1,000 msg/s. The bytes are what paho sends for a successful QoS 1 PUBACK in MQTT 3.1.1 and 5.

paho retries failed connections on its own and says nothing about why they failed, so the
subclass also reports each attempt (``reconnect``) and its exception, ``check(now)`` ends an
attempt that got no CONNACK within ``mqtt.connect_timeout``, and ``describe_failure`` turns any
of these into the one-line cause that is logged and shown by ``status``. With ``mqtt.protocol:
auto`` a refusal of MQTT 5 (or silence after a v5 CONNECT) switches the next attempt to 3.1.1.
``pause_reading`` stops paho reading from the socket, so the broker holds what we cannot take.
"""

import errno
import logging
import socket
import ssl
import struct
import threading
import time
from typing import NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from mqttbuffer.config.validators import parse_broker_url

log = logging.getLogger(__name__)

PAHO_2 = hasattr(mqtt, "CallbackAPIVersion")
SUMMARY_INTERVAL = 300.0
READ_PAUSE_POLL = 0.2

_PUBACK = struct.Struct("!BBH")  # packet type, remaining length 2, packet id

# CONNACK refusals by MQTT 5 reason code; MQTT 3.1.1 return codes 1-5 map onto the first five.
_V3_TO_V5 = {1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}
_REFUSALS = {
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid (check mqtt.client_id)",
    0x86: "bad user name or password (check mqtt.username and mqtt.password)",
    0x87: "not authorized (check mqtt.username, mqtt.password and the broker's ACL)",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8C: "bad authentication method",
}
UNSUPPORTED_PROTOCOL = 0x84


class Target(NamedTuple):
    """What a connection attempt was aimed at, for the words of a failure."""

    host: str
    port: int
    tls: bool
    ca_file: str
    protocol: str  # "5" or "3.1.1"


class NoConnack(Exception):
    """The attempt got no CONNACK (or no TCP/TLS answer) within the connect timeout."""

    def __init__(self, seconds):
        super().__init__(seconds)
        self.seconds = seconds


class ClosedBeforeConnack(Exception):
    """The broker closed the connection after our CONNECT without answering it."""


class Refused(Exception):
    """The broker answered CONNECT with a refusal; ``code`` is the MQTT 5 reason code."""

    def __init__(self, code, text):
        super().__init__(text)
        self.code = code


def refusal(rc):
    """A paho CONNACK result as a Refused, or None when the connection was accepted."""
    code = getattr(rc, "value", rc)
    if code == 0:
        return None
    code = _V3_TO_V5.get(code, code)
    return Refused(code, _REFUSALS.get(code) or str(rc))


def describe_failure(error, target):
    """Why a connection attempt failed, as one line for the log and ``status``.

    ``error`` is what the attempt ended with: an exception raised while connecting (DNS, TCP,
    TLS, WebSocket), a ``Refused`` CONNACK, ``NoConnack`` or ``ClosedBeforeConnack``.
    """
    where = f"{target.host}:{target.port}"
    ca = target.ca_file or "the system's CA certificates"
    if isinstance(error, Refused):
        return f"the broker at {where} refused the MQTT {target.protocol} connection: {error}"
    if isinstance(error, NoConnack):
        return (f"no answer from {where} within {error.seconds:g}s of connecting (MQTT {target.protocol};"
                " not an MQTT port, or a broker that ignores this protocol version?)")
    if isinstance(error, ClosedBeforeConnack):
        return (f"{where} closed the connection without answering the MQTT {target.protocol} CONNECT"
                " (a broker that does not speak this protocol version, or one that rejects the client?)")
    if isinstance(error, ssl.SSLCertVerificationError):
        if error.verify_code == 62 or "mismatch" in str(error.verify_message).lower():
            return f"TLS: the broker's certificate is not valid for the name {target.host} (CA: {ca})"
        return f"TLS: certificate verify failed for {target.host}: {error.verify_message} (CA: {ca})"
    if isinstance(error, ssl.SSLError):
        hint = " (is this a TLS port?)" if "WRONG_VERSION_NUMBER" in str(error) else ""
        return f"TLS: handshake with {where} failed: {getattr(error, 'reason', None) or error}{hint}"
    if isinstance(error, socket.gaierror):
        return f"DNS: cannot resolve {target.host}: {error.strerror}"
    if isinstance(error, ConnectionRefusedError):
        return f"TCP: connection to {where} refused (nothing listens there?)"
    if isinstance(error, TimeoutError):
        return f"TCP/TLS: no answer from {where} in time ({error})"
    if isinstance(error, OSError) and error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"TCP: {where} unreachable: {error.strerror}"
    if type(error).__name__ == "WebsocketConnectionError":
        return f"WebSocket handshake with {where} failed: {error}"
    if isinstance(error, OSError):
        return f"connection to {where} failed: {error.strerror or error}"
    return f"connection to {where} failed: {type(error).__name__}: {error}"


class _Client(mqtt.Client):
    """paho's client with hooks for connection attempts and for pausing reads."""

    hooks = None  # the BrokerClient

    def reconnect(self):
        self.hooks.attempt_starting()
        try:
            return super().reconnect()
        except Exception as exc:
            self.hooks.attempt_failed(exc)
            raise

    def loop_read(self, max_packets=1):
        hooks = self.hooks
        if hooks.connected and not hooks.reading.is_set():
            # Unread bytes stay in the socket, TCP's window closes and the broker keeps the rest.
            if not hooks.reading.wait(READ_PAUSE_POLL):
                return mqtt.MQTT_ERR_SUCCESS
        return super().loop_read(max_packets)

    if not PAHO_2:
        def _send_puback(self, mid):
            return mqtt.MQTT_ERR_SUCCESS


class BrokerClient:
    """A connection to the broker that re-subscribes on every connect and defers PUBACKs.

    ``on_message(msg)``, ``on_connected(session_present)`` and ``on_disconnected(reason)`` are
    called on paho's network thread. The broker facts for ``status`` go into ``stats``.
    """

    def __init__(self, mqtt_cfg, client_id, topics, stats, on_message, on_connected, on_disconnected):
        self._cfg = mqtt_cfg
        self._topics = topics
        self._stats = stats
        # A restarted ingestor subscribes again; until then its predecessor's flag is stale.
        stats.set("broker_subscribed", 0)
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self.client_id = client_id
        transport, self._tls, self.host, self.port, path = parse_broker_url(mqtt_cfg.broker)
        self._lock = threading.Lock()
        self.connected = False
        self.keeps_packet_ids = False  # as the last CONNACK promised
        self.reading = threading.Event()
        self.reading.set()
        self._attempt_started = None  # monotonic start of an attempt still waiting for CONNACK
        self._failures = 0
        self._failing_since = 0.0
        self._summary_at = 0.0
        # auto: start with what this daemon last connected with (ingestor restarts), else 5.
        self.protocol = mqtt_cfg.protocol
        if self.protocol == "auto":
            self.protocol = "3.1.1" if stats.get("broker_protocol") == 4 else "5"
        v5 = self.protocol == "5"
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        clean_session = None if v5 else False
        if PAHO_2:
            self.client = _Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                protocol=protocol, transport=transport, manual_ack=True,
            )
        else:
            self.client = _Client(client_id=client_id, clean_session=clean_session, protocol=protocol,
                                  transport=transport)
        self.client.hooks = self
        self.client._connect_timeout = mqtt_cfg.connect_timeout
        if transport == "websockets":
            self.client.ws_set_options(path=path)
        if self._tls:
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

    def target(self):
        return Target(self.host, self.port, self._tls, self._cfg.tls.ca_file, self.protocol)

    def window(self):
        """How many unacked QoS 1 messages the broker lets us hold, when we told it (MQTT 5)."""
        return self._cfg.receive_maximum if self.protocol == "5" else None

    def start(self):
        """Connect in the background (retrying until the broker answers) and start paho's thread."""
        if self._stats.get("broker_connected") or not self._stats.get("broker_since"):
            self._stats.set("broker_connected", 0)
            self._stats.set("broker_since", time.time())
        self.client.connect_async(self.host, self.port, keepalive=self._cfg.keepalive)
        self._use_protocol(self.protocol)
        self.client.loop_start()

    def _use_protocol(self, protocol):
        self.protocol = protocol
        if protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._cfg.session_expiry
            props.ReceiveMaximum = self._cfg.receive_maximum
            self.client._protocol = mqtt.MQTTv5
            self.client._clean_start = False
            self.client._connect_properties = props
        else:
            self.client._protocol = mqtt.MQTTv311
            self.client._clean_session = False
            self.client._connect_properties = None

    def pause_reading(self, pause):
        """Stop (True) or resume (False) taking bytes from the broker's socket."""
        if pause:
            self.reading.clear()
        else:
            self.reading.set()

    def ack_all(self, mids):
        """PUBACK QoS 1 messages by packet id, in the order given, with one queued write."""
        if mids:
            packet = b"".join([_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids])
            self.client._packet_queue(mqtt.PUBACK, packet, 0, 0)

    def check(self, now):
        """End an attempt that got no CONNACK within connect_timeout (paho would wait for keepalive)."""
        with self._lock:
            started = self._attempt_started
            if started is None or now - started < self._cfg.connect_timeout:
                return
        self.attempt_failed(NoConnack(self._cfg.connect_timeout))
        sock = self.client.socket()
        raw = getattr(sock, "_socket", sock)
        if raw is not None:
            try:
                raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        """Send what is queued (acks included), disconnect cleanly and join paho's thread."""
        self.reading.set()
        self.client.disconnect()
        self.client.loop_stop()

    # --- paho's network thread -------------------------------------------------------------

    def attempt_starting(self):
        with self._lock:
            self._attempt_started = time.monotonic()

    def attempt_failed(self, error):
        """Record and log why the current attempt failed (once per attempt)."""
        with self._lock:
            started = self._attempt_started
            if started is None:
                return
            self._attempt_started = None
        target = self.target()
        cause = describe_failure(error, target)
        if self._cfg.protocol == "auto" and self._should_switch(error):
            other = "3.1.1" if self.protocol == "5" else "5"
            self._use_protocol(other)
            if other == "3.1.1" and not isinstance(error, NoConnack):
                # A refusal or a hang-up right after CONNECT is how 3.1.1-only brokers answer 5.
                log.info("MQTT broker %s:%s does not take MQTT 5 (%s); using MQTT 3.1.1 (mqtt.protocol: auto)",
                         self.host, self.port, cause)
                return
            cause += f"; trying MQTT {other} next (mqtt.protocol: auto)"
        self._stats.set_text("broker_error", cause)
        now = time.monotonic()
        self._failures += 1
        if self._failures == 1:
            self._failing_since = started
            self._summary_at = now + SUMMARY_INTERVAL
            log.warning("Cannot connect to MQTT broker %s:%s: %s", self.host, self.port, cause)
        elif now >= self._summary_at:
            self._summary_at = now + SUMMARY_INTERVAL
            log.warning("Still not connected to MQTT broker %s:%s: %d attempts failed in %.0fs; the last: %s",
                        self.host, self.port, self._failures, now - self._failing_since, cause)

    def _should_switch(self, error):
        if isinstance(error, Refused):
            return error.code == UNSUPPORTED_PROTOCOL and self.protocol == "5"
        # Silence or a hang-up after CONNECT: try the other version, unless this daemon has
        # already had a connection (then the broker is down or restarting, not picky).
        return isinstance(error, (NoConnack, ClosedBeforeConnack)) and not self._stats.get("broker_protocol")

    def _handle_connect(self, client, userdata, flags, rc, properties=None):
        refused = refusal(rc)
        if refused is not None:
            self.attempt_failed(refused)
            return
        with self._lock:
            self._attempt_started = None
            self.connected = True
        present = bool(flags.get("session present") if isinstance(flags, dict)
                       else getattr(flags, "session_present", False))
        had_session = bool(self._stats.get("broker_protocol"))
        stats = self._stats
        stats.set("broker_connected", 1)
        stats.set("broker_since", time.time())
        stats.set("broker_protocol", 5 if self.protocol == "5" else 4)
        stats.set("broker_session_present", int(present))
        # QoS 2 cannot work unless a broker resends under the original packet ids (RabbitMQ, which
        # does not, announces Maximum QoS 1); MQTT 3.1.1 does not say.
        self.keeps_packet_ids = self.protocol == "5" and getattr(properties, "MaximumQoS", 2) == 2
        stats.set_text("broker_error", "")
        after = ""
        if self._failures:
            attempts = "1 failed attempt" if self._failures == 1 else f"{self._failures} failed attempts"
            after = f" after {attempts} in {time.monotonic() - self._failing_since:.0f}s"
        self._failures = 0
        log.info("Connected to MQTT broker %s:%s (MQTT %s, session present: %s)%s",
                 self.host, self.port, self.protocol, "yes" if present else "no", after)
        if had_session and not present and self._keeps_session():
            stats.add("sessions_lost")
            log.warning(
                "MQTT broker %s:%s kept no session for client id %s although it had one: messages published"
                " while we were away may be lost at the broker. Make it keep sessions across restarts"
                " (mosquitto: persistence true with a writable persistence_location; see README, Broker"
                " requirements)", self.host, self.port, self.client_id)
        self._on_connected(present)
        client.subscribe(self._subscriptions())

    def _keeps_session(self):
        return self.protocol != "5" or self._cfg.session_expiry > 0

    def _subscriptions(self):
        if self.protocol == "5":
            # Retained messages only for a new subscription: a reconnect that finds its session
            # would otherwise get every retained message again, each stored as a new message.
            options = SubscribeOptions(qos=self._cfg.qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
            return [(topic, options) for topic in self._topics]
        return [(topic, self._cfg.qos) for topic in self._topics]

    def _handle_disconnect(self, client, userdata, *args):
        # 1.x: (rc) or (rc, properties); 2.x: (flags, reason_code, properties)
        rc = args[1] if PAHO_2 else args[0]
        with self._lock:
            was_connected, self.connected = self.connected, False
        if not was_connected:
            self.attempt_failed(ClosedBeforeConnack())
            return
        self._stats.set("broker_connected", 0)
        self._stats.set("broker_subscribed", 0)
        self._stats.set("broker_since", time.time())
        reason = rc.getName() if hasattr(rc, "getName") else mqtt.error_string(rc)
        self._stats.set_text("broker_error", f"disconnected: {reason}")
        self._on_disconnected(reason)

    def _handle_subscribe(self, client, userdata, mid, granted, properties=None):
        failed = [t for t, g in zip(self._topics, granted, strict=False) if getattr(g, "value", g) >= 0x80]
        if failed:
            log.error("Broker refused subscription to %s", ", ".join(failed))
        else:
            log.info("Subscribed to %s", ", ".join(self._topics))
            self._stats.set("broker_subscribed", 1)

    def _handle_message(self, client, userdata, msg):
        self._on_message(msg)
