"""The API's answers in words for the operator: status, likely fix, network cause, safe URL.

Everything here ends up in log lines and in ``mqttbufferctl status``, so nothing here may carry a
secret: URLs lose their user info and query string, and network errors become a short cause
("connection refused", "timed out") instead of urllib3's nested repr.
"""

import errno
import http
import http.client
import json
import socket
import ssl
import time
import urllib.parse

import urllib3

from mqttbuffer.stats import API_STATES

HINTS = {
    401: "check api.key",
    403: "check that api.key's role may INSERT into the table (grants, row-level security policy)",
    404: "check api.url (table or function name)",
    405: "check api.url: the endpoint does not take POST",
    407: "check the proxy credentials",
    410: "check api.url: the endpoint is gone",
    411: "the endpoint wants a Content-Length: check api.url",
    413: "the message is too large for the endpoint",
    414: "check api.url: it is too long",
    415: "check api.url and api.headers: the endpoint does not take JSON",
    426: "check api.url: the endpoint wants another protocol (https://?)",
    431: "check api.headers: they are too large",
}
REJECTED_HINT = "the endpoint refuses every message: check the table's columns against api.fields"
FAILED_HINT = "the API fails on every message: check its logs"
# While the API refuses everything, the ERROR line comes back this often (seconds).
REMIND_EVERY = 300.0


def safe_url(url):
    """The URL without user info, query or fragment (where keys tend to hide)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def status_words(status):
    """``401 Unauthorized`` (or just the number for a status without a standard phrase)."""
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def refusal(status, url, location=None, body=""):
    """One line for an endpoint that refuses everything: status, safe URL, likely fix."""
    if 300 <= status < 400:
        where = safe_url(location) if location else "nowhere (no Location header)"
        fix = f"api.url redirects to {where}: set api.url to the final URL"
    else:
        fix = HINTS.get(status) or (FAILED_HINT if status >= 500 else REJECTED_HINT)
    said = f" ({body})" if body else ""
    return f"{status_words(status)} from {safe_url(url)}{said}: {fix}"


def api_message(text, status):
    """What an answer's body says, for the refusal line: the ``message`` of a JSON error body
    (PostgREST, Supabase, most JSON APIs), else its start when no fix is known for the status."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        words = value.get("message") or value.get("error") or value.get("msg")
        if isinstance(words, str):
            return body_excerpt(words, 120)
    return "" if status in HINTS else body_excerpt(text)


def body_excerpt(text, limit=160):
    """The start of an answer's body on one line, for log lines."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset by peer",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "timed out",
    errno.EPIPE: "connection closed by peer",
}


def network_cause(exc):
    """A short cause for a failed request: "connection refused", "timed out", "TLS: ..."."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        # urllib3 makes NewConnectionError (and so NameResolutionError) a ConnectTimeoutError.
        if isinstance(exc, (urllib3.exceptions.TimeoutError, socket.timeout, TimeoutError)) \
                and not isinstance(exc, urllib3.exceptions.NewConnectionError):
            return "timed out"
        if isinstance(exc, ssl.SSLError):
            words = getattr(exc, "verify_message", None) or exc.reason or "error"
            return "TLS: " + words.lower().replace("_", " ")
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve the host ({exc.strerror})"
        if type(exc).__name__ == "NameResolutionError":  # urllib3 2.x only
            return "cannot resolve the host"
        if isinstance(exc, OSError) and exc.errno in _ERRNO_WORDS:
            return _ERRNO_WORDS[exc.errno]
        if isinstance(exc, http.client.RemoteDisconnected):
            return "connection closed without an answer"
        if isinstance(exc, ConnectionResetError):
            return "connection reset by peer"
        if isinstance(exc, http.client.HTTPException):
            return "not an HTTP answer"
        nested = getattr(exc, "reason", None)
        if isinstance(nested, BaseException):
            exc = nested
            continue
        args = [a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)]
        exc = args[-1] if args else exc.__context__
    return "no answer"



def duration(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class ApiReport:
    """What the operator is told about the API: the shared stats behind ``status`` (api_state,
    api_since, api_status, api_error) and one log line per change of state."""

    def __init__(self, stats, log, url):
        self.stats, self.log, self.url = stats, log, url
        self.state, self.status, self.began, self.reminded = "ok", None, 0.0, 0.0

    def update(self, state, answer, wait, pending, now):
        """After each answer: ``state`` as the delivery policy sees the API now."""
        if state == "ok":
            if self.state != "ok":
                self.log.info("API accepts messages again (it was %s for %s)", self.state,
                              duration(now - self.began))
                self._set(state, None, "")
            return
        why = self._why(state, answer)
        if state != self.state or (state == "refusing" and answer.status != self.status):
            if self.state == "ok":
                self.began = now
            self.reminded = now
            self._set(state, answer.status, why)
            if state == "refusing":
                self.log.error("API refuses every request: %s; holding %d messages (none dead-lettered),"
                               " next try in %.1fs", why, pending, wait)
            else:
                self.log.warning("API %s: %s; retrying in %.1fs", state, why, wait)
            return
        self.stats.set_text("api_error", why)
        if state == "refusing" and now - self.reminded >= REMIND_EVERY:
            self.reminded = now
            self.log.error("API still refuses every request (for %s): %s; holding %d messages",
                           duration(now - self.began), why, pending)
        else:
            self.log.debug("API still %s: %s; retrying in %.1fs", state, why, wait)

    def _why(self, state, answer):
        if state == "refusing":
            return refusal(answer.status, self.url, answer.location, api_message(answer.excerpt, answer.status))
        said = answer.problem if answer.status is None else status_words(answer.status)
        return f"{said} from {safe_url(self.url)}"

    def _set(self, state, status, why):
        self.state, self.status = state, status
        self.stats.set("api_state", API_STATES.index(state))
        self.stats.set("api_since", time.time())
        self.stats.set("api_status", status or 0)
        self.stats.set_text("api_error", why)
