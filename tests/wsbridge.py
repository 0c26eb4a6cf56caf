"""A WebSocket (optionally TLS) front for a test broker's TCP port, for the ws:// and wss:// tests.

The mosquitto this suite runs is built without a working WebSocket listener, so this bridge
speaks the WebSocket side (RFC 6455 handshake, binary frames) on 127.0.0.1 and relays the MQTT
bytes to and from the broker's plain TCP listener: paho's WebSocket transport is what is tested.
"""

import base64
import hashlib
import select
import socket
import struct
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _frame(data):
    """The broker's bytes as one unmasked binary frame."""
    if len(data) < 126:
        return struct.pack("!BB", 0x82, len(data)) + data
    if len(data) < 65536:
        return struct.pack("!BBH", 0x82, 126, len(data)) + data
    return struct.pack("!BBQ", 0x82, 127, len(data)) + data


def _read_exact(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


class WebSocketBridge:
    """Listens on a free port; each WebSocket client gets its own TCP connection to ``broker_port``."""

    def __init__(self, broker_port, ssl_context=None):
        self.broker_port = broker_port
        self.ssl_context = ssl_context
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        self._sockets = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        try:
            if self.ssl_context:
                client = self.ssl_context.wrap_socket(client, server_side=True)
            self._sockets.append(client)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = client.recv(4096)
                if not chunk:
                    return
                request += chunk
            headers = dict(line.split(b":", 1) for line in request.split(b"\r\n")[1:] if b":" in line)
            headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
            accept = base64.b64encode(hashlib.sha1(headers[b"sec-websocket-key"] + GUID).digest())
            client.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
            broker = socket.create_connection(("127.0.0.1", self.broker_port))
            self._sockets.append(broker)
        except (OSError, KeyError):
            client.close()
            return
        try:
            self._relay(client, broker)
        except OSError:
            pass
        finally:
            self._close_pair(client, broker)

    def _relay(self, client, broker):
        """One thread per connection (an SSL socket must not be read and written by two threads)."""
        while True:
            if getattr(client, "pending", lambda: 0)():
                readable = [client]
            else:
                readable, _, _ = select.select([client, broker], [], [])
            if client in readable and not self._frame_to_broker(client, broker):
                return
            if broker in readable:
                data = broker.recv(65536)
                if not data:
                    return
                client.sendall(_frame(data))

    @staticmethod
    def _frame_to_broker(client, broker):
        """Unwrap one client frame (masked, as RFC 6455 requires) and send its bytes on; False at close."""
        first, second = _read_exact(client, 2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", _read_exact(client, 2))[0]
        elif length == 127:
            length = struct.unpack("!Q", _read_exact(client, 8))[0]
        mask = _read_exact(client, 4) if second & 0x80 else b"\0\0\0\0"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(_read_exact(client, length)))
        opcode = first & 0x0F
        if opcode == 8:
            return False
        if opcode in (0, 1, 2):
            broker.sendall(payload)
        return True

    @staticmethod
    def _close_pair(*sockets):
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self):
        self._closed = True
        self._listener.close()
        self._close_pair(*self._sockets)
