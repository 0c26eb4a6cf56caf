"""``mqttbufferctl``: the daemon's status, restarting a worker, dead letters, and ``doctor``.

``dead-letters`` works with the daemon stopped too: it then opens the store the config names.
``doctor`` needs no daemon: it tries the config's store, broker and API itself (see doctor.py)
and exits 0 when every check passes, 1 when any fails.

Exit codes (as LSB init scripts): 0 ok, 1 the daemon answered with an error, 2 usage or config
problem, 3 the daemon is not running. ``status`` (with or without --json) exits 0 when the daemon
is healthy, 1 when it is degraded (the reasons are its first line), 3 when it is not running.
"""

import argparse
import datetime
import json
import os
import sys

from mqttbuffer.cli import DEFAULT_CONFIG
from mqttbuffer.config.loader import ConfigError, load_config
from mqttbuffer.control import doctor
from mqttbuffer.control.client import NotRunning, request
from mqttbuffer.control.status import format_summary
from mqttbuffer.exitcodes import CTL_DEGRADED, CTL_ERROR, CTL_NOT_RUNNING, CTL_OK, CTL_USAGE
from mqttbuffer.stats import WORKER_NAMES
from mqttbuffer.store import Store, StoreError


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="mqttbufferctl", description="Control a running mqttbuffer daemon.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", "-c", default=DEFAULT_CONFIG,
                       help=f"the daemon's config, to find its control socket (default: {DEFAULT_CONFIG})")
    where.add_argument("--socket", "-s", help="the control socket's path (instead of reading the config)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser("status", help="health verdict (exit 0 healthy, 1 degraded), workers, buffer,"
                                                " broker, API, counters and rates")
    status.add_argument("--json", action="store_true", help="the full status document as JSON")
    restart = commands.add_parser("restart-worker", help="restart one worker (returns at once)")
    restart.add_argument("name", choices=WORKER_NAMES)
    dead = commands.add_parser("dead-letters", help="list, replay or purge messages the API did not take")
    dead.add_argument("action", nargs="?", choices=["list", "replay", "purge"], default="list")
    dead.add_argument("ids", nargs="*", help="message ids (replay/purge; default: all)")
    dead.add_argument("--limit", type=int, default=50, help="how many to list, newest first (default 50)")
    dead.add_argument("--json", action="store_true", help="list as JSON")
    commands.add_parser("doctor", help="try the config's store, broker and API (daemon running or not);"
                                       " one line each with the fix; exit 1 if any fails")
    return parser.parse_args(argv)


def socket_path(args):
    if args.socket:
        return args.socket
    return load_config(args.config).control.socket


def main(argv=None):
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return CTL_USAGE if exc.code else CTL_OK
    if args.command == "doctor":
        if args.socket:
            print("mqttbufferctl: doctor reads the config: give --config FILE, not --socket", file=sys.stderr)
            return CTL_USAGE
        return doctor.run(args.config)
    try:
        path = socket_path(args)
    except ConfigError as exc:
        print(f"mqttbufferctl: {exc}", file=sys.stderr)
        return CTL_USAGE
    command_args = {"name": args.name} if args.command == "restart-worker" else {}
    try:
        reply = request(path, "status" if args.command == "dead-letters" else args.command, **command_args)
    except NotRunning as exc:
        if args.command == "dead-letters" and not args.socket:
            return dead_letters_stopped(args)
        print(f"mqttbufferctl: mqttbuffer is not running ({exc}); start it with"
              " 'systemctl start mqttbuffer' or 'mqttbuffer --config FILE'", file=sys.stderr)
        return CTL_NOT_RUNNING
    except (OSError, ValueError) as exc:
        print(f"mqttbufferctl: {path}: no usable reply: {exc}", file=sys.stderr)
        return CTL_ERROR
    if reply.get("status") != "ok":
        print(f"mqttbufferctl: {reply.get('error', 'error')}", file=sys.stderr)
        return CTL_ERROR
    data = reply["data"]
    if args.command == "dead-letters":
        return dead_letters(args, data["store"])
    if args.command == "status":
        print(json.dumps(data, indent=2) if args.json else format_summary(data))
        return CTL_OK if data["health"]["verdict"] == "healthy" else CTL_DEGRADED
    else:
        print(f"restarting {data['name']} (pid {data['pid']})")
    return CTL_OK


def dead_letters_stopped(args):
    """With the daemon stopped, the store named by the config (the daemon would use the same)."""
    path = load_config(args.config).buffer.persist_file
    if not os.path.exists(path):
        print(f"mqttbufferctl: mqttbuffer is not running and there is no store at {path} ({args.config}:"
              " buffer.persist_file)", file=sys.stderr)
        return CTL_ERROR
    print(f"mqttbuffer is not running; using the store {path}", file=sys.stderr)
    return dead_letters(args, path)


def dead_letters(args, store_path):
    """Dead letters are read and changed in the store itself: the supervisor holds no SQLite
    connection, and a replay only moves rows inside one transaction of the store."""
    try:
        store = Store.open(store_path)
    except StoreError as exc:
        print(f"mqttbufferctl: cannot open the store: {exc} (run as root or as the daemon's user)", file=sys.stderr)
        return CTL_ERROR
    try:
        ids = args.ids or None
        if args.action == "replay":
            print(f"replayed {store.replay_dead_letters(ids)} dead letters into the queue")
        elif args.action == "purge":
            print(f"purged {store.purge_dead_letters(ids)} dead letters")
        else:
            letters = store.dead_letters(args.limit)
            if args.json:
                for letter in letters:
                    letter["payload"] = letter["payload"].decode("utf-8", "replace")
                print(json.dumps(letters, indent=2))
            else:
                print(f"{store.dead_letter_count()} dead letters" + (f", newest {len(letters)}:" if letters else ""))
                for d in letters:
                    dead_at = datetime.datetime.fromtimestamp(d["dead_at"]).strftime("%Y-%m-%d %H:%M:%S")
                    status = f" HTTP {d['status']}" if d["status"] else ""
                    print(f"  {d['id']}  {dead_at}  {d['reason']}{status}  attempts {d['attempts']}  {d['topic']}")
                    if d["excerpt"]:
                        print(f"      {d['excerpt'][:200]}")
    finally:
        store.close()
    return CTL_OK


if __name__ == "__main__":
    sys.exit(main())
