"""``his-gateway users``: the finance console's logins.

his-gateway users add --username U --role viewer|clerk|approver|admin [--password-file F]
his-gateway users passwd --username U [--password-file F]
his-gateway users disable|enable --username U
his-gateway users list

The password comes from ``--password-file`` (its first line), else ``HIS_CONSOLE_PASSWORD``, else a prompt;
never from the command line, where other users of the machine could read it.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from gateway.console import auth
from gateway.console.auth import Role, UserError
from gateway.store.db import Database
from gateway.store.migrate import upgrade

PASSWORD_ENV = "HIS_CONSOLE_PASSWORD"


def read_password(path: Path | None) -> str:
    if path is not None:
        lines = path.read_text(encoding="utf-8").splitlines()
        return lines[0] if lines else ""
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise UserError(f"no password: give --password-file, set {PASSWORD_ENV}, or run on a terminal")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UserError("the two passwords differ")
    return first


def _run(args: argparse.Namespace) -> int:
    async def go() -> None:
        cfg = args.cfg
        db = Database(cfg.database.url, pool_size=cfg.database.pool_size)
        try:
            await upgrade(db)
            if args.users_command == "add":
                user = await auth.add_user(db, args.username, args.role, read_password(args.password_file))
                print(f"user {user.username} added with role {user.role.name}")
            elif args.users_command == "passwd":
                await auth.set_password(db, args.username, read_password(args.password_file))
                print(f"password of {args.username} set")
            elif args.users_command in ("disable", "enable"):
                await auth.set_active(db, args.username, args.users_command == "enable")
                print(f"user {args.username} {args.users_command}d")
            else:
                for u in await auth.list_users(db):
                    print(f"{u.username}\t{u.role}\t{'active' if u.active else 'disabled'}")
        finally:
            await db.close()

    try:
        asyncio.run(go())
    except UserError as e:
        print(f"his-gateway users: {e}", file=sys.stderr)
        return 1
    return 0


def register(commands: Any) -> None:
    users = commands.add_parser("users", help="the finance console's logins")
    sub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="add a login")
    add.add_argument("--username", required=True)
    add.add_argument("--role", required=True, choices=[r.name for r in Role])
    add.add_argument(
        "--password-file", type=Path, help=f"first line is the password (else ${PASSWORD_ENV}, else a prompt)"
    )
    passwd = sub.add_parser("passwd", help="set a login's password and end its sessions (never enables it)")
    passwd.add_argument("--username", required=True)
    passwd.add_argument("--password-file", type=Path)
    for action in ("disable", "enable"):
        sub.add_parser(action, help=f"{action} a login").add_argument("--username", required=True)
    sub.add_parser("list", help="the logins and their roles")
    users.set_defaults(func=_run)
