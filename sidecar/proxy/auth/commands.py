"""`sidecar auth new-key|hash-key|check`: make API key entries and check credentials files.

`new-key` prints the key once (to stderr, for the person who asked) and the
entry for the key file (to stdout, so `>> keys.yaml` appends it): the key
itself is never stored anywhere by the sidecar.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import yaml

from sidecar.config import ENV_CONFIG_FILE, ConfigError, load_config
from sidecar.proxy.auth.authenticator import Authenticator, AuthSetupError
from sidecar.proxy.auth.keys import digest, new_key

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    auth = commands.add_parser("auth", help="make API keys, check the key file and JWT key material")
    actions = auth.add_subparsers(dest="auth_command", metavar="ACTION", required=True)

    make = actions.add_parser("new-key", help="generate an API key; print the key (stderr) and its key-file entry (stdout)")
    make.add_argument("--id", required=True, help="the key's name in audit records and logs (not secret)")
    make.add_argument("--tenant", required=True)
    make.add_argument("--user", default=None)
    make.add_argument("--tier", default=None, help="rate-limit tier (a name under limits.tiers)")
    make.add_argument("--model", action="append", dest="models", metavar="MODEL", help="allowed model (repeatable; default: all)")
    make.add_argument("--expires", default=None, metavar="YYYY-MM-DD", help="refused from this date (UTC)")
    make.set_defaults(handler=_new_key)

    hash_key = actions.add_parser("hash-key", help="print the SHA-256 digest of a key read from stdin")
    hash_key.set_defaults(handler=_hash_key)

    check = actions.add_parser("check", help="load the key file and JWT keys the config names, report problems")
    check.add_argument("--config", metavar="FILE", help=f"config file (default: ${ENV_CONFIG_FILE})")
    check.set_defaults(handler=_check)


def _new_key(args: argparse.Namespace) -> int:
    key = new_key()
    entry: dict[str, Any] = {"id": args.id, "sha256": digest(key), "tenant": args.tenant}
    for name in ("user", "tier", "models", "expires"):
        value = getattr(args, name)
        if value:
            entry[name] = value
    print(f"API key for {args.id} (shown once; store it now): {key}", file=sys.stderr)
    sys.stdout.write(yaml.safe_dump([entry], sort_keys=False))
    return EXIT_OK


def _hash_key(args: argparse.Namespace) -> int:
    key = sys.stdin.readline().strip()
    if not key:
        print("hash-key: expected the key on stdin", file=sys.stderr)
        return EXIT_USAGE
    print(digest(key))
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    path = args.config or os.environ.get(ENV_CONFIG_FILE)
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    if not config.auth.enabled:
        print("auth is off (auth.enabled: false): nothing to check")
        return EXIT_OK
    try:
        authenticator = Authenticator(config.auth)
    except AuthSetupError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    print(authenticator.describe())
    return EXIT_OK
