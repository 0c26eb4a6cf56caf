"""``mqttbufferctl doctor``: try each thing the config needs, one line each, with the fix.

Works with the daemon stopped or running: it reads the store read-only, connects to the broker
with a client id of its own and a clean session (never the daemon's session), and sends the API an
empty batch ``[]``. Marks: ``✔`` works, ``✘`` does not (exit 1), ``!`` could not tell (no failure).
"""

import os
import shutil
import socket
import ssl
import sys
from typing import NamedTuple

import urllib3

from mqttbuffer.config.errors import ConfigError
from mqttbuffer.config.loader import load_config
from mqttbuffer.config.validators import parse_broker_url, redact_url
from mqttbuffer.control.client import NotRunning, request
from mqttbuffer.delivery.answers import HINTS, body_excerpt, network_cause, safe_url, status_words
from mqttbuffer.delivery.apiheaders import request_headers
from mqttbuffer.exitcodes import CTL_ERROR, CTL_OK
from mqttbuffer.mqtt import mqttprobe
from mqttbuffer.mqtt.broker import NoConnack, Refused, Target, describe_failure
from mqttbuffer.store import Store, StoreError

OK, FAIL, UNSURE = "✔", "✘", "!"
PROBE_TIMEOUT = 10.0
EXCERPT = 160


class Check(NamedTuple):
    mark: str
    text: str
    fix: str = ""


def run(config_path, environ=None, out=None):
    """Print one line per check; return 0 when none failed, else 1."""
    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    failed = False
    for check in checks(config_path, environ):
        print(f"{check.mark} {check.text}", file=out, flush=True)
        if check.fix:
            print(f"    fix: {check.fix}", file=out, flush=True)
        failed = failed or check.mark == FAIL
    return CTL_ERROR if failed else CTL_OK


def checks(config_path, environ):
    try:
        cfg = load_config(config_path, environ)
    except ConfigError as exc:
        yield Check(FAIL, f"config: {exc}", "correct the key named (mqttbuffer --config FILE --check validates)")
        return
    yield Check(OK, f"config {config_path} is valid")
    yield daemon_check(cfg)
    yield from pikvm_checks(cfg, environ)
    yield store_directory_check(cfg)
    yield store_check(cfg)
    yield from broker_checks(cfg)
    yield api_check(cfg)


def daemon_check(cfg):
    try:
        reply = request(cfg.control.socket, "status", timeout=5.0)
        data = reply["data"]
        return Check(OK, f"daemon running (pid {data['pid']}): {data['health']['summary']}")
    except NotRunning:
        return Check(OK, "daemon not running (the checks below work either way)")
    except (OSError, ValueError, KeyError) as exc:
        return Check(UNSURE, f"daemon: no usable answer on {cfg.control.socket}: {exc}")


def pikvm_checks(cfg, environ):
    if not shutil.which("kvmd-pstrun") and not os.path.isdir("/etc/kvmd"):
        return
    pst = environ.get("KVMD_PST_DATA")
    if not pst or not os.path.isdir(pst):
        yield Check(FAIL, "PiKVM: the PST partition is not mounted for this command",
                    "run it as 'kvmd-pstrun -- mqttbufferctl doctor' (the service runs under kvmd-pstrun too)")
    elif not cfg.buffer.persist_file.startswith(os.path.join(pst, "")):
        yield Check(FAIL, f"PiKVM: the store {cfg.buffer.persist_file} is not on PST ({pst}); the root is read-only",
                    "leave buffer.persist_file unset (it then defaults to $KVMD_PST_DATA/mqttbuffer/buffer.db)")
    else:
        yield Check(OK, f"PiKVM: PST mounted at {pst}")


def store_directory_check(cfg):
    directory = os.path.dirname(cfg.buffer.persist_file)
    existing = directory
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        return Check(FAIL, f"store directory {existing} is not writable by uid {os.getuid()}",
                     "run doctor as the daemon's user (sudo -u mqttbuffer) or root, or give that user the directory")
    free = shutil.disk_usage(existing).free
    state = "is writable" if existing == directory else f"will be created in {existing}, which is writable"
    text = f"store directory {directory} {state}, {_size(free)} free"
    if free < cfg.buffer.max_bytes:
        return Check(FAIL, text + f", less than buffer.max_bytes ({_size(cfg.buffer.max_bytes)})",
                     "free space on that file system, or lower buffer.max_bytes")
    return Check(OK, text)


def store_check(cfg):
    path = cfg.buffer.persist_file
    if not os.path.exists(path):
        return Check(OK, f"store {path} does not exist yet: created at first start")
    try:
        verdict, pending, dead = Store.inspect(path)
    except StoreError as exc:
        hint = ("run doctor as the daemon's user or root" if "unable to open" in str(exc) else
                "stop the daemon, move the file away (its messages are lost) and start it again")
        return Check(FAIL, f"store cannot be read: {exc}", hint)
    if verdict != "ok":
        return Check(FAIL, f"store {path} is damaged: quick_check says {verdict[:EXCERPT]}",
                     "stop the daemon, 'sqlite3 FILE .recover' into a new file, or move it away")
    return Check(OK, f"store {path} opens, quick_check ok: {pending} waiting, {dead} dead letters")


def broker_checks(cfg):
    m = cfg.mqtt
    transport, tls, host, port, _ = parse_broker_url(m.broker)
    url = redact_url(m.broker)
    protocols = ["5", "3.1.1"] if m.protocol == "auto" else [m.protocol]
    timeout = min(PROBE_TIMEOUT, m.connect_timeout)
    client_id = f"mqttbuffer-doctor-{os.getpid()}"
    for i, protocol in enumerate(protocols):
        target = Target(host, port, tls, m.tls.ca_file, protocol)
        try:
            sock = mqttprobe.open_socket(host, port, timeout, m.tls if tls else None)
        except (OSError, ssl.SSLError) as exc:
            yield Check(FAIL, f"broker {url}: {describe_failure(exc, target)}", _broker_fix(exc, m))
            return
        try:
            if transport == "websockets":
                yield Check(OK, f"broker {url}: {'TLS' if tls else 'TCP'} connection works"
                                " (MQTT over WebSocket not tried further)")
                return
            try:
                mqttprobe.mqtt_connect(sock, client_id, protocol, m.username, m.password, timeout)
            except (OSError, Refused, NoConnack, mqttprobe.ClosedBeforeConnack) as exc:
                if i + 1 < len(protocols):
                    continue  # auto: 3.1.1 next
                yield Check(FAIL, f"broker {url}: {describe_failure(exc, target)}", _broker_fix(exc, m))
                return
            auto = f" (mqtt.protocol auto picks {protocol})" if m.protocol == "auto" else ""
            yield Check(OK, f"broker {url}: {'TLS, ' if tls else ''}MQTT {protocol} CONNECT accepted{auto}")
            yield _subscribe_check(sock, cfg.topics, protocol, url)
            return
        finally:
            mqttprobe.disconnect(sock)


def _subscribe_check(sock, topics, protocol, url):
    # A shared subscription would take its share of messages away from the daemon.
    filters = [t for t in topics if not t.startswith("$share/")]
    skipped = ""
    if len(filters) < len(topics):
        skipped = " ($share filters not tried: they would take messages from the daemon)"
    if not filters:
        return Check(UNSURE, f"broker {url}: SUBSCRIBE not tried{skipped}")
    try:
        refused = mqttprobe.mqtt_subscribe(sock, filters, protocol)
    except (OSError, mqttprobe.ClosedBeforeConnack) as exc:
        return Check(FAIL, f"broker {url}: SUBSCRIBE got no answer ({exc or 'connection closed'})",
                     "look at the broker's log: it may close clients its ACL denies")
    if refused:
        return Check(FAIL, f"broker {url}: SUBSCRIBE refused for {', '.join(refused)}",
                     "let mqtt.username read these topics in the broker's ACL, or correct topics")
    return Check(OK, f"broker {url}: SUBSCRIBE to {', '.join(filters)} granted{skipped}")


def _broker_fix(exc, m):
    if isinstance(exc, Refused):
        return {0x84: "set mqtt.protocol: 3.1.1 (or auto)",
                0x85: "set another mqtt.client_id (the broker refuses this one)"}.get(
            exc.code, "check mqtt.username and mqtt.password (or mqtt.password_file) and the broker's ACL")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ("set mqtt.tls.ca_file to the CA certificate that signed the broker's certificate"
                " (and use the host name the certificate names in mqtt.broker)")
    if isinstance(exc, ssl.SSLError):
        return "use mqtts:// only for a TLS port (8883), tcp:// for a plain one (1883)"
    if isinstance(exc, socket.gaierror):
        return "check the host name in mqtt.broker"
    if isinstance(exc, ConnectionRefusedError):
        return "check mqtt.broker's host and port (1883 plain, 8883 TLS) and that the broker runs"
    if isinstance(exc, (NoConnack, TimeoutError, mqttprobe.ClosedBeforeConnack)):
        return "check that mqtt.broker names an MQTT port, and the broker's log for this client"
    return "check mqtt.broker and that the broker is reachable from here"


def api_check(cfg):
    url = safe_url(cfg.api.url)
    http = urllib3.PoolManager(num_pools=1, retries=False,
                               timeout=urllib3.Timeout(connect=min(PROBE_TIMEOUT, cfg.api.timeout),
                                                       read=min(PROBE_TIMEOUT, cfg.api.timeout)))
    try:
        response = http.request("POST", cfg.api.url, body=b"[]", headers=request_headers(cfg.api.key, cfg.api.headers),
                                redirect=False, preload_content=False)
        excerpt = body_excerpt(response.read(EXCERPT * 4).decode("utf-8", "replace"), EXCERPT)
        response.release_conn()
    except urllib3.exceptions.HTTPError as exc:
        return Check(FAIL, f"API {url}: {network_cause(exc)}",
                     "check api.url's host and port, and that the API is up and reachable from here")
    finally:
        http.clear()
    status = response.status
    said = status_words(status) + (f": {excerpt}" if excerpt else "")
    if 200 <= status < 300:
        return Check(OK, f"API {url}: accepted an empty batch [] ({status_words(status)})")
    if 300 <= status < 400:
        location = response.headers.get("Location")
        return Check(FAIL, f"API {url} redirects ({said})",
                     f"set api.url to {safe_url(location) if location else 'the final URL'}: a POST is not followed")
    if status in HINTS:
        return Check(FAIL, f"API {url} refuses the request ({said})", HINTS[status])
    if status in (400, 409, 422):
        return Check(UNSURE, f"API {url} refuses an empty batch [] ({said}); it may still take messages",
                     f"probe with one test message: curl -X POST -H 'Content-Type: application/json'"
                     f" -d '[{{\"id\":\"doctor-test\",\"topic\":\"test\",\"payload\":1}}]' {url}"
                     " (plus your key headers)")
    return Check(FAIL, f"API {url} fails ({said})", "the API is down or failing: look at its logs, try again")


def _size(n):
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
