"""A private PostgreSQL and an HTTP receiver in front of it that answers as PostgREST documents.

Debian does not package PostgREST, so the receiver does what it does for ``POST /rest/v1/TABLE``
with a JSON array (its error bodies are PostgREST's own, see its ``src/PostgREST/Error.hs``):

- 401 ``PGRST301`` unless ``apikey`` and the bearer token are the key the test set;
- 404 ``PGRST205`` for a table PostgreSQL does not have;
- 400 ``PGRST102`` "All object keys must match" for a body whose objects differ in keys, and
  "Empty or invalid json" for a body that is not JSON;
- 400 ``PGRST204`` for a key that is no column;
- the insert runs in PostgreSQL as the ``anon`` role (so grants and row-level security apply),
  in one transaction: 201 (empty body, ``return=minimal``); 409 with code 23505 for a duplicate
  key unless ``Prefer: resolution=ignore-duplicates`` (then ``ON CONFLICT (primary key) DO
  NOTHING``, which under row-level security needs a SELECT policy); other PostgreSQL errors
  mapped to statuses as PostgREST maps them (42501 -> 401/403, 42P01 -> 404, most others 400).

PostgreSQL runs from Debian's binaries in a temporary directory, on a free port and a Unix socket
there, as the ``postgres`` user when the tests run as root (initdb refuses root); it is talked to
with ``psql``. Nothing touches the system's cluster.
"""

import contextlib
import glob
import http.server
import json
import os
import pathlib
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import threading

import pytest

from tests.conftest import free_port, wait_until

_BINDIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)


def postgres_bindir():
    """Where initdb/pg_ctl live, or None when PostgreSQL is not installed."""
    for directory in _BINDIRS:
        if os.access(os.path.join(directory, "initdb"), os.X_OK):
            return directory
    found = shutil.which("initdb")
    return os.path.dirname(found) if found else None


class PgError(Exception):
    def __init__(self, code, message, detail=None, hint=None):
        super().__init__(code, message)
        self.code, self.message, self.detail, self.hint = code, message, detail, hint


class PostgreSQL:
    """A throwaway cluster: ``start()``, ``sql(text, role=None)``, ``stop()``."""

    def __init__(self, bindir):
        self.bindir = bindir
        self.directory = tempfile.mkdtemp(prefix="mqttbuffer-pg-")
        self.data = os.path.join(self.directory, "data")
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres"
            os.chown(self.directory, pwd.getpwnam(self.user).pw_uid, -1)

    def _run(self, *args, **kwargs):
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run([*prefix, *args], capture_output=True, text=True, **kwargs)

    def start(self):
        result = self._run(os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", "postgres", "-A", "trust",
                           "--no-sync", "-E", "UTF8", "--locale=C")
        assert result.returncode == 0, result.stderr
        options = f"-p {self.port} -k {self.directory} -c listen_addresses='' -c fsync=off"
        result = self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-o", options, "-w", "-s",
                           "-l", os.path.join(self.directory, "log"), "start")
        assert result.returncode == 0, result.stderr + self.log()
        # Supabase's roles; service_role gets every table, as Supabase's default privileges give it.
        self.sql("CREATE ROLE anon NOLOGIN; CREATE ROLE authenticated NOLOGIN; CREATE ROLE service_role NOLOGIN"
                 " BYPASSRLS; GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;"
                 " ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO service_role;")
        return self

    def log(self):
        with contextlib.suppress(OSError), open(os.path.join(self.directory, "log")) as f:
            return f.read()
        return ""

    def stop(self):
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", "immediate", "-s", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)

    def sql(self, text, role=None):
        """Run SQL in one transaction; return the rows (tuples of strings); raise PgError."""
        script = "\\set VERBOSITY verbose\n\\set ON_ERROR_STOP 1\nBEGIN;\n"
        if role:
            script += f"SET LOCAL ROLE {role};\n"
        script += text.rstrip().rstrip(";") + ";\nCOMMIT;\n"
        result = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-F", "\x1f", "-h", self.directory, "-p", str(self.port),
             "-U", "postgres", "-d", "postgres"], input=script, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise _pg_error(result.stderr)
        return [tuple(line.split("\x1f")) for line in result.stdout.splitlines() if line]


def _pg_error(stderr):
    found = re.search(r"ERROR:\s+(\w{5}): (.*)", stderr)
    if not found:
        return PgError("XX000", stderr.strip())
    detail = re.search(r"DETAIL:\s+(.*)", stderr)
    hint = re.search(r"HINT:\s+(.*)", stderr)
    return PgError(found.group(1), found.group(2).strip(), detail and detail.group(1).strip(),
                   hint and hint.group(1).strip())


def literal(text):
    """A dollar-quoted SQL literal for any text."""
    tag = "b" + secrets.token_hex(6)
    return f"${tag}${text}${tag}$"


def _pg_status(code, message):
    # As PostgREST's mapSQLtoHTTP (the codes an insert can meet).
    if code in ("23503", "23505"):
        return 409
    if code == "42501":
        return 401  # insufficient privilege for an anonymous request
    if code in ("42P01", "42883"):
        return 404
    if code.startswith(("08", "53")) or code == "57P01":
        return 503
    if code.startswith(("25", "40", "2D", "XX", "09", "38", "39", "3B", "54", "55", "57", "58", "F0", "HV")):
        return 500
    return 400


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A client killed mid-request (as a test does on purpose) is no server error.
        pass


class PostgREST:
    """The receiver. ``key``: the key it accepts (None: any); ``on_commit(rows)``: called after a
    request's insert committed, before the answer goes out; ``answers``: [(status, body)] per request."""

    def __init__(self, pg, key="test-key"):
        self.pg = pg
        self.key = key
        self.on_commit = None
        self.honours_prefer = True  # False: an API that ignores Prefer (as RFC 7240 allows)
        self.role = "anon"  # the role of the key: "anon", or "service_role" (bypasses row-level security)
        self.answers = []
        # Like PostgREST's schema cache: a table's columns are looked up once, until it disappears.
        self.schema_cache = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, body, headers = receiver.handle(self.path, self.headers, raw)
                with receiver.lock:
                    receiver.answers.append((status, body))
                payload = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if body is not None:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, table):
        return f"http://127.0.0.1:{self.port}/rest/v1/{table}"

    def statuses(self):
        with self.lock:
            return [status for status, _ in self.answers]

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def handle(self, path, headers, raw):
        if self.key is not None:
            bearer = headers.get("Authorization", "")
            if headers.get("apikey") != self.key or bearer != f"Bearer {self.key}":
                return 401, _body("PGRST301", "No suitable key or wrong key type"), \
                    {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        table = path.split("?", 1)[0].rsplit("/", 1)[-1]
        columns = self.schema_cache.get(table) or {name for (name,) in self.pg.sql(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public'"
            f" AND table_name = {literal(table)}")}
        self.schema_cache[table] = columns
        if not columns:
            return 404, _body("PGRST205", f"Could not find the table 'public.{table}' in the schema cache"), {}
        try:
            rows = json.loads(raw)
        except ValueError:
            return 400, _body("PGRST102", "Empty or invalid json"), {}
        rows = rows if isinstance(rows, list) else [rows]
        if not all(isinstance(r, dict) for r in rows) or len({tuple(sorted(r)) for r in rows}) > 1:
            return 400, _body("PGRST102", "All object keys must match"), {}
        keys = sorted(rows[0]) if rows else []
        unknown = [k for k in keys if k not in columns]
        if unknown:
            message = f"Could not find the '{unknown[0]}' column of '{table}' in the schema cache"
            return 400, _body("PGRST204", message), {}
        names = ", ".join(f'"{k}"' for k in keys)
        conflict = ""
        if self.honours_prefer and "resolution=ignore-duplicates" in headers.get("Prefer", ""):
            # As PostgREST: the primary key is the conflict target, which needs SELECT rights and,
            # under row-level security, a SELECT policy that lets the new row through.
            keys = self.pg.sql("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                               f" AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'public.\"{table}\"'::regclass"
                               " AND i.indisprimary")
            target = ", ".join(f'"{key}"' for (key,) in keys)
            conflict = f" ON CONFLICT ({target}) DO NOTHING"
        try:
            source = f'json_populate_recordset(NULL::public."{table}", {literal(json.dumps(rows))}::json)'
            self.pg.sql(f'INSERT INTO public."{table}" ({names}) SELECT {names} FROM {source}{conflict}',
                        role=self.role)
        except PgError as exc:
            if exc.code == "42P01":
                self.schema_cache.pop(table, None)
            status = _pg_status(exc.code, exc.message)
            if exc.code == "42501" and self.role != "anon":
                status = 403  # PostgREST: 401 for the anonymous role, 403 for an authenticated one
            return status, _body(exc.code, exc.message, exc.detail, exc.hint), {}
        if self.on_commit:
            self.on_commit(rows)
        return 201, None, {}


def _body(code, message, details=None, hint=None):
    return {"code": code, "details": details, "hint": hint, "message": message}


def wait_for_rows(pg, table, count, timeout=60):
    def enough():
        rows = pg.sql(f'SELECT count(*), count(DISTINCT id) FROM public."{table}"')[0]
        return (int(rows[0]), int(rows[1])) if int(rows[0]) >= count else None
    return wait_until(enough, timeout, f"{count} rows in {table}", interval=0.1)


SQL = pathlib.Path(__file__).parents[1] / "examples" / "supabase" / "mqtt_messages.sql"
TABLE = "mqtt_messages"


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL holding the example Supabase table (skipped when not installed)."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries (initdb) on this machine: apt-get install postgresql")
    pg = PostgreSQL(bindir).start()
    pg.sql(SQL.read_text())
    yield pg
    pg.stop()


@pytest.fixture
def postgrest(postgres):
    """A PostgREST-faithful receiver over an emptied table."""
    postgres.sql(f"TRUNCATE public.{TABLE}")
    receiver = PostgREST(postgres)
    yield receiver
    receiver.close()

