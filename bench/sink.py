"""A fast HTTP sink for benchmarks: asyncio, keep-alive, TCP_NODELAY; counts what arrives.

The stdlib server caps a keep-alive client at ~23 requests/s (Nagle + delayed ACK), so the
benchmarks use this one. ``status`` can be switched to 503 to hold messages back.
"""

import asyncio
import json
import socket
import threading
import time


class FastSink:
    def __init__(self):
        self.status = 200
        self.ids = set()
        self.latencies = []  # arrival wall time - publish wall time ("t" in the payload)
        self.count = 0
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}/ingest"

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def reset(self):
        with self.lock:
            self.ids, self.latencies, self.count = set(), [], 0

    async def _serve(self, reader, writer):
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                status = self.status
                if status == 200:
                    self._record(body)
                reason = b"OK" if status == 200 else b"Service Unavailable"
                writer.write(b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\n\r\n" % (status, reason))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _record(self, body):
        now = time.time()
        messages = json.loads(body)
        with self.lock:
            for m in messages:
                self.count += 1
                self.ids.add(m.get("id"))
                payload = m.get("payload")
                if isinstance(payload, dict) and "t" in payload:
                    self.latencies.append(now - payload["t"])

    def distinct(self):
        with self.lock:
            return len(self.ids)
