"""``his-bridge``: serve, check, try, journal, certs, init, csr, doctor.

Exit codes: 0 success, 1 a check found a problem or `try --send` failed, 2 bad usage or configuration.
``doctor`` exits with its worst finding: 0 OK, 1 WARN, 2 FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from adapters.base import AdapterError
from adapters.profile import ProfileError, load_profile
from bridge import catalog, doctor, logs, protocol, terminal_protocol, tls
from bridge.certs import make_dev_certs
from bridge.config import ConfigError, load_config
from bridge.egress import admin as egress_admin
from bridge.egress.check import check_outbound
from bridge.egress.journal import EgressState
from bridge.init import InitError, InitOptions, init, next_csr
from bridge.journal import JournalCorrupt, State
from bridge.journal_admin import AdminError, JournalAdmin, entry_text
from bridge.server import serve


def _load_config(path: str) -> Any:
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"config error:\n{e}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config)
    logs.configure(cfg.logging.level, cfg.logging.format == "json")
    try:
        asyncio.run(serve(cfg))
    except JournalCorrupt as e:
        print(f"journal error: {e}", file=sys.stderr)
        return 2
    return 0


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs; a VALUE that reads as a TOML value (``true``, ``5``, ``"x"``) is taken as one,
    anything else as text, so ``--set soap.base_url=http://10.0.0.5`` needs no quoting."""
    import tomllib

    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


def _check_profile(path: str | Path, overrides: dict[str, Any], problems: list[str], notes: list[str]) -> None:
    """A profile must bind every catalog operation; a local WSDL is also loaded to check calls and parameters."""
    try:
        profile = load_profile(
            path,
            known_operations=frozenset(catalog.OPERATIONS),
            read_operations=catalog.READ_OPERATIONS,
            overrides=overrides,
        )
    except ProfileError as e:
        problems.append(f"profile: {e}")
        return
    missing = sorted(set(catalog.OPERATIONS) - set(profile.operations))
    if missing:
        problems.append(f"profile {path} does not bind: {', '.join(missing)}")
    if "trade.check" not in profile.operations:
        problems.append("profile binds no trade.check: in-doubt writes could never be resolved")
    notes.append(f"profile {profile.name} ({profile.protocol}): {len(profile.operations)} operations bound")
    if profile.protocol == "soap":
        wsdl = profile.soap.wsdl
        if wsdl.startswith(("http://", "https://")):
            notes.append(f"WSDL {wsdl} not fetched here (`his-bridge try` loads it)")
            return
        try:
            asyncio.run(_start_and_close(profile.build_adapter()))
            notes.append(f"WSDL {wsdl}: every call and parameter exists")
        except ProfileError as e:
            problems.append(f"profile against its WSDL: {e}")
        except Exception as e:
            problems.append(f"WSDL {wsdl}: {type(e).__name__}: {e}")


async def _start_and_close(adapter: Any) -> None:
    await adapter.start()
    await adapter.close()


def _report(problems: list[str], notes: list[str], what: str) -> int:
    for n in notes:
        print(f"OK    {n}")
    for p in problems:
        print(f"FAIL  {p}")
    print(f"{what} OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config, its keys and certificates, and the profile against the catalog; or, with
    ``--profile``, one profile alone, without a config, keys or a running HIS (for a vendor engineer)."""
    problems: list[str] = []
    notes: list[str] = []
    try:
        overrides = _overrides(args.set)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.profile:
        _check_profile(args.profile, overrides, problems, notes)
        return _report(problems, notes, "profile")
    cfg = _load_config(args.config)
    try:
        protocol.load_signing_key(cfg.signing.key_id, cfg.signing.key)
        for c in cfg.signing.clients:
            protocol.load_verify_key(c.key_id, c.public_key)
    except (OSError, ValueError) as e:
        problems.append(f"signing key: {e}")
    for name, path in (("server certificate", cfg.tls.cert), ("platform CA", cfg.tls.client_ca)):
        try:
            days = tls.days_to_expiry(tls.load_certificate(path))
            (problems if days < 0 else notes).append(f"{name} {path}: {days:.0f} days to expiry")
        except (OSError, ValueError) as e:
            problems.append(f"{name} {path}: {e}")
    _check_profile(cfg.his.profile, {**cfg.his.overrides, **overrides}, problems, notes)
    check_outbound(cfg, problems, notes)
    return _report(problems, notes, "config")


def cmd_certs_dev(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        certs = make_dev_certs(out, hospital=args.hospital, hosts=tuple(args.host or ("localhost", "127.0.0.1")))
    except FileExistsError as e:
        print(f"refusing to overwrite {e.filename}", file=sys.stderr)
        return 2
    print(f"development CA, certificates and signing keys written to {certs.dir}")
    return 0


def cmd_egress(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config)
    if cfg.egress is None:
        print("this agent has no [egress]: no terminals pay through it", file=sys.stderr)
        return 2
    try:
        if args.egress_command == "show":
            print(egress_admin.detail(egress_admin.one(cfg.egress.journal, args.terminal, args.request_id)))
            return 0
        state = EgressState(args.state) if args.state else None
        for request in egress_admin.listing(cfg.egress.journal, state=state, terminal=args.terminal, limit=args.limit):
            print(egress_admin.line(request))
    except egress_admin.EgressAdminError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_terminal_key(args: argparse.Namespace) -> int:
    import os

    out = Path(args.out)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"refusing to overwrite {out}", file=sys.stderr)
        return 2
    with os.fdopen(fd, "w") as f:
        f.write(terminal_protocol.new_key() + "\n")
    print(f"terminal key written to {out} (0600): name it in the terminal's key_file, and install it on the terminal")
    return 0


def _ask(value: str | None, flag: str, prompt: str, default: str | None = None) -> str:
    """A flag's value, or the answer to a question when run at a terminal; without either, a usage error."""
    if value:
        return value
    if sys.stdin.isatty():
        answer = input(f"{prompt}{f' [{default}]' if default else ''}: ").strip()
        if answer or default:
            return answer or str(default)
    if default is not None:
        return default
    print(f"error: {flag} is required", file=sys.stderr)
    raise SystemExit(2)


def cmd_init(args: argparse.Namespace) -> int:
    try:
        opts = InitOptions(
            hospital=_ask(args.hospital, "--hospital", "Hospital code (as the platform knows it)"),
            protocol=_ask(args.protocol, "--protocol", "HIS protocol (soap, hl7, dbproc)"),
            endpoint=_ask(args.endpoint, "--endpoint", "HIS endpoint (URL, HOST:PORT or ODBC connection string)"),
            out=Path(args.out),
            listen=_ask(args.listen, "--listen", "Listen address for the platform", "0.0.0.0:8443"),
            ops_listen=args.ops_listen,
            journal=Path(args.journal),
            profile=Path(args.profile) if args.profile else None,
            platform_cn=args.platform_cn,
            hosts=args.host or [],
        )
        written = init(opts)
    except InitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print(f"next: read {opts.out / 'README.txt'}")
    return 0


def cmd_csr(args: argparse.Namespace) -> int:
    try:
        key, csr = next_csr(Path(args.config), args.host)
    except InitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {key} and {csr}; send the CSR to the platform CA (docs/OPERATIONS.md, rotating certificates)")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    t = doctor.Thresholds(
        cert_warn_days=args.cert_warn_days,
        disk_warn_bytes=int(args.disk_warn_mb * doctor.MIB),
        disk_fail_bytes=int(args.disk_fail_mb * doctor.MIB),
        his_timeout_s=args.his_timeout,
    )
    report = doctor.run(args.config, platform_url=args.platform_url, thresholds=t)
    print(report.text())
    return int(report.worst)


def _journal_admin(args: argparse.Namespace) -> Any:
    path = Path(args.journal) if args.journal else _load_config(args.config).journal.path
    try:
        return JournalAdmin(path)
    except AdminError as e:
        print(f"journal error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_journal(args: argparse.Namespace) -> int:
    admin = _journal_admin(args)
    try:
        if args.action == "list":
            state = State(args.state) if args.state else None
            for entry in admin.list(state, args.limit, args.before):
                print(entry_text(entry))
        elif args.action == "show":
            print(entry_text(admin.find(args.ref), full=True))
        elif args.action == "retry":
            print(entry_text(admin.retry(args.ref, args.note)))
        elif args.action == "quarantine":
            print(entry_text(admin.quarantine(args.ref, args.note)))
        elif args.action == "resolve":
            result = json.loads(args.result) if args.result else None
            print(entry_text(admin.resolve(args.ref, args.outcome, args.note, result)))
    except AdminError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except json.JSONDecodeError as e:
        print(f"error: --result is not JSON: {e}", file=sys.stderr)
        return 2
    finally:
        admin.close()
    return 0


def cmd_try(args: argparse.Namespace) -> int:
    """Dry run: show what one operation would put on the wire; with --send, send it and show the reply as
    received and as mapped. The output is stable for a given input, so it can be kept as a golden file."""
    op = catalog.get(args.operation)
    if op is None:
        print(f"unknown operation {args.operation!r}; known: {', '.join(catalog.OPERATIONS)}", file=sys.stderr)
        return 2
    try:
        params = op.input.model_validate_json(Path(args.input).read_text(encoding="utf-8")).model_dump(mode="json")
        profile = load_profile(
            args.profile,
            known_operations=frozenset(catalog.OPERATIONS),
            read_operations=catalog.READ_OPERATIONS,
            overrides=_overrides(args.set),
        )
    except (OSError, ValueError, ProfileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    async def run() -> int:
        adapter = profile.build_adapter()
        try:
            await adapter.start()
            preview = await adapter.preview(args.operation, params)
            print(f"# {preview.protocol} -> {preview.target}")
            for k, v in preview.details.items():
                if isinstance(v, dict):
                    for name, value in v.items():
                        print(f"# {k}.{name}:")
                        print(value)
                else:
                    print(f"# {k}: {v}")
            print("# on the wire")
            print(preview.payload.rstrip("\n"))
            if not args.send:
                return 0
            try:
                result, raw = await adapter.call_raw(args.operation, params)
            except AdapterError as e:
                print(f"# failed ({e.kind.value}) {e.code}: {e.message}")
                if e.raw is not None:
                    print("# reply")
                    print(e.raw)
                return 1
            print("# reply")
            print(raw if raw is not None else "(this adapter does not show its raw reply)")
            print("# mapped result")
            print(json.dumps(op.output.model_validate(result).model_dump(mode="json"), ensure_ascii=False, indent=2))
        except (AdapterError, ProfileError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        finally:
            await adapter.close()
        return 0

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="his-bridge", description="HIS Bridge agent")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the agent")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_serve)

    set_help = "override a profile value, e.g. soap.base_url=http://10.0.0.5:8089 (repeatable)"
    p = sub.add_parser("check", help="validate config, keys, certificates and profile (or a profile alone)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="the agent config: keys, certificates and its profile")
    what.add_argument("--profile", help="a profile alone; needs no config, keys or running HIS")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("try", help="dry run of one operation against a profile")
    p.add_argument("operation")
    p.add_argument("--profile", required=True)
    p.add_argument("--input", required=True, help="JSON file with the operation's input")
    p.add_argument("--send", action="store_true", help="also send it; print the reply and the mapped result")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    p.set_defaults(func=cmd_try)

    p = sub.add_parser("certs", help="certificates")
    csub = p.add_subparsers(dest="certs_command", required=True)
    d = csub.add_parser("dev", help="create a development CA, server/client certificates and signing keys")
    d.add_argument("--out", required=True)
    d.add_argument("--hospital", default="H001")
    d.add_argument("--host", action="append", help="server certificate host names / IPs (repeatable)")
    d.set_defaults(func=cmd_certs_dev)

    p = sub.add_parser("egress", help="read the outbound journal: terminal payments and refunds (read-only)")
    p.add_argument("--config", required=True)
    esub = p.add_subparsers(dest="egress_command", required=True)
    e = esub.add_parser("list", help="newest first")
    e.add_argument("--state", choices=["forwarding", "in_doubt", "queued", "done", "failed"])
    e.add_argument("--terminal", help="one terminal's requests")
    e.add_argument("--limit", type=int, default=50)
    e = esub.add_parser("show", help="one request, with what was forwarded and what the terminal was told")
    e.add_argument("terminal")
    e.add_argument("request_id")
    p.set_defaults(func=cmd_egress)

    p = sub.add_parser("terminal-key", help="a fresh HMAC key for one intranet terminal (file 0600, never overwritten)")
    p.add_argument("--out", required=True, help="the key file to write (give the same key to the terminal)")
    p.set_defaults(func=cmd_terminal_key)

    p = sub.add_parser("init", help="set up a hospital: config, signing key, TLS key and CSR (never overwrites)")
    p.add_argument("--hospital", help="hospital code, as the platform knows it")
    p.add_argument("--protocol", choices=["soap", "hl7", "dbproc"], help="how the HIS is called")
    p.add_argument(
        "--endpoint",
        help="SOAP base URL or service URL (…/HisService.asmx), HL7 HOST:PORT, or ODBC connection string (a secret)",
    )
    p.add_argument("--listen", help="address the platform connects to (default 0.0.0.0:8443)")
    p.add_argument("--ops-listen", default="127.0.0.1:9109", help="metrics and probes (keep it private)")
    p.add_argument("--out", default="/etc/his-bridge", help="config folder to create (default /etc/his-bridge)")
    p.add_argument("--journal", default="/var/lib/his-bridge/journal.sqlite3")
    p.add_argument("--profile", help="HIS profile to start from (default: the shipped one for the protocol)")
    p.add_argument("--platform-cn", default="platform-gateway", help="the platform client certificate's CN")
    p.add_argument("--host", action="append", help="name or IP the platform reaches this host by (repeatable)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("csr", help="a new TLS key and CSR beside the current ones, to renew the certificate")
    p.add_argument("--config", required=True)
    p.add_argument("--host", action="append", help="subjectAltName (default: those of the current certificate)")
    p.set_defaults(func=cmd_csr)

    p = sub.add_parser("doctor", help="check everything an operator checks first; exit code is the worst finding")
    p.add_argument("--config", required=True)
    p.add_argument("--platform-url", help="an https URL of the platform whose Date header the clock is compared to")
    p.add_argument("--disk-warn-mb", type=float, default=1024, help="WARN below this much free on the journal disk")
    p.add_argument("--disk-fail-mb", type=float, default=100, help="FAIL below this much free on the journal disk")
    p.add_argument("--cert-warn-days", type=float, default=30, help="WARN when a certificate expires sooner")
    p.add_argument("--his-timeout", type=float, default=10, help="seconds to wait for the HIS")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("journal", help="inspect and act on the journal")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config")
    src.add_argument("--journal", help="path of the journal file")
    jsub = p.add_subparsers(dest="action", required=True)
    j = jsub.add_parser("list")
    j.add_argument("--state", choices=["accepted", "in_flight", "done", "failed", "unknown", "quarantined"])
    j.add_argument("--limit", type=int, default=50)
    j.add_argument("--before", type=int, help="only entries with a journal id below this (paging)")
    j = jsub.add_parser("show")
    j.add_argument("ref", help="journal id or request id")
    j = jsub.add_parser("retry", help="give an entry fresh attempts (in-doubt ones are checked first)")
    j.add_argument("ref")
    j.add_argument("--note")
    j = jsub.add_parser("quarantine", help="stop retrying an entry")
    j.add_argument("ref")
    j.add_argument("--note")
    j = jsub.add_parser("resolve", help="close an entry by hand after checking the HIS")
    j.add_argument("ref")
    j.add_argument("--as", dest="outcome", choices=["done", "failed"], required=True)
    j.add_argument("--note", required=True)
    j.add_argument("--result", help="JSON result in the operation's output shape (for --as done)")
    p.set_defaults(func=cmd_journal)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        logs.configure("warning", json=True)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
