"""One synchronous MQTT CONNECT and SUBSCRIBE, for ``mqttbufferctl doctor``.

Written as raw packets on a blocking socket rather than with paho: doctor wants one attempt with
a timeout and each step's own error (TCP, TLS, CONNACK, SUBACK), the same on paho 1.6.1 and 2.x,
with no thread. It connects with its own client id and a clean session, so it never touches the
daemon's session, and never acknowledges or keeps a message.
"""

import socket
import ssl
import struct

from mqttbuffer.mqtt.broker import ClosedBeforeConnack, NoConnack, refusal

CONNACK, PUBLISH, SUBACK = 2, 3, 9


def _string(text):
    data = text.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def _varint(n):
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first_byte, body):
    return bytes([first_byte]) + _varint(len(body)) + body


def connect_packet(client_id, protocol, username="", password="", keepalive=30):
    """CONNECT with a clean session (MQTT 5: session expiry 0, the default)."""
    flags = 0x02 | (0x80 if username else 0) | (0x40 if username and password else 0)
    body = _string("MQTT") + bytes([5 if protocol == "5" else 4, flags]) + struct.pack("!H", keepalive)
    if protocol == "5":
        body += _varint(0)
    body += _string(client_id)
    if username:
        body += _string(username)
        if password:
            body += _string(password)
    return _packet(0x10, body)


def subscribe_packet(packet_id, filters, protocol, qos=1):
    body = struct.pack("!H", packet_id) + (_varint(0) if protocol == "5" else b"")
    for topic in filters:
        body += _string(topic) + bytes([qos])
    return _packet(0x82, body)


def read_packet(sock):
    """(packet type, body) of the next packet; ClosedBeforeConnack when the broker hangs up."""
    first = _read_exactly(sock, 1)[0]
    header = b""
    while not header or header[-1] & 0x80:
        header += _read_exactly(sock, 1)
    length, _ = _varint_at(header, 0)
    return first >> 4, _read_exactly(sock, length)


def _read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ClosedBeforeConnack()
        data += chunk
    return data


def open_socket(host, port, timeout, tls_cfg=None):
    """A TCP (and TLS, when ``tls_cfg`` is given) connection with the daemon's TLS settings."""
    sock = socket.create_connection((host, port), timeout=timeout)
    if tls_cfg is None:
        return sock
    try:
        context = ssl.create_default_context(cafile=tls_cfg.ca_file or None)
        if tls_cfg.cert_file:
            context.load_cert_chain(tls_cfg.cert_file, tls_cfg.key_file or None)
        if tls_cfg.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def mqtt_connect(sock, client_id, protocol, username, password, timeout):
    """Send CONNECT, wait for CONNACK; raise Refused / NoConnack / ClosedBeforeConnack."""
    sock.sendall(connect_packet(client_id, protocol, username, password))
    try:
        kind, body = read_packet(sock)
    except TimeoutError:
        raise NoConnack(timeout) from None
    if kind != CONNACK or len(body) < 2:
        raise ClosedBeforeConnack()
    refused = refusal(body[1])
    if refused is not None:
        raise refused


def mqtt_subscribe(sock, filters, protocol):
    """Send SUBSCRIBE; return the filters the broker refused (SUBACK code 0x80 or above)."""
    sock.sendall(subscribe_packet(1, filters, protocol))
    while True:
        kind, body = read_packet(sock)
        if kind == SUBACK:
            break
        # Retained messages may arrive before the SUBACK: not acknowledged, gone with the session.
        if kind != PUBLISH:
            raise ClosedBeforeConnack()
    codes = body[2:]
    if protocol == "5":
        props_len, start = _varint_at(codes, 0)
        codes = codes[start + props_len:]
    return [topic for topic, code in zip(filters, codes, strict=False) if code >= 0x80]


def _varint_at(data, i):
    """(value, index after it) of the variable byte integer at data[i]."""
    value, shift = 0, 0
    while True:
        digit = data[i]
        i += 1
        value += (digit & 0x7F) << shift
        shift += 7
        if not digit & 0x80:
            return value, i


def disconnect(sock):
    try:
        sock.sendall(b"\xe0\x00")
    except OSError:
        pass
    sock.close()

