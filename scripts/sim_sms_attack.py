#!/usr/bin/env python3
"""Simulate an SMS pumping attack (短信盗刷) on the gateway, mixed with normal patient traffic.

    .venv/bin/python scripts/sim_sms_attack.py [--attack 3000] [--patients 300] [--minutes 120] [--seed 7]

One gateway with the default ``[sms]`` policy (plus the hospital's Wi-Fi egress on the IP allow list, as the
docs advise) runs on SQLite with the sandbox SMS provider and captcha. Every request goes through the signed
API; time is simulated (a manual clock), so two hours pass in a minute or two.

- The attack: a script on PCs behind rotating addresses (a pool of thousands), a new client fingerprint (or
  none) on every request, random numbers in a few target segments, purposes mixed. It cannot solve captchas.
- The patients: numbers spread over the carriers' segments (a few in the attacked ones), their own phone's
  address or the hospital Wi-Fi, a stable fingerprint. They solve a captcha when asked, some press "resend"
  after a minute, and all type in the code they received.

Prints what got through; the last line is one JSON object with ``attack_sms_sent``, ``attack_attempts``,
``legit_refused`` and ``legit_captcha_rate``.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import logging
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file from anywhere: import the repo's packages
    sys.path.insert(0, str(REPO))

import structlog  # noqa: E402

from gateway.sms.clock import ManualClock  # noqa: E402
from tests.support.gateway_rig import ApiClient, make_keys  # noqa: E402
from tests.support.sms_rig import SmsApp, service, sms_section, start_sms_gateway  # noqa: E402

TARGET_SEGMENTS = ("1380013", "1391234", "1507788")
CARRIER_PREFIXES = ("130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152", "155",
                    "156", "158", "159", "166", "175", "176", "177", "180", "181", "182", "186", "187", "188",
                    "189", "191", "198", "199")  # fmt: skip
HOSPITAL_WIFI = "100.64.10.1"
PURPOSES = ("binding", "payment", "login")
START = 1_800_000_000.0


@dataclass
class Patient:
    phone: str
    purpose: str
    client: dict[str, Any]
    resends: bool
    asked_captcha: bool = False
    refused: bool = False
    verified: bool = False


@dataclass(order=True)
class Event:
    at: float
    seq: int
    kind: str = field(compare=False)
    who: Any = field(compare=False)


def attack_client(rng: random.Random, pool: list[str]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "ip": rng.choice(pool),
        "user_agent": f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/12{rng.randint(0, 9)}.0.0.0 Safari/537.36",
        "accept_language": rng.choice(["zh-CN,zh;q=0.9", "zh-CN", "en-US,en;q=0.8"]),
    }
    if rng.random() < 0.7:
        info["fingerprint"] = f"{rng.getrandbits(64):016x}"
    return info


def patient(rng: random.Random, n: int) -> Patient:
    if rng.random() < 0.03:
        phone = rng.choice(TARGET_SEGMENTS) + f"{rng.randrange(10**4):04d}"
    else:
        phone = rng.choice(CARRIER_PREFIXES) + f"{rng.randrange(10**8):08d}"
    on_wifi = rng.random() < 0.35
    client = {
        "ip": HOSPITAL_WIFI if on_wifi else f"112.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        "user_agent": f"Mozilla/5.0 (Linux; Android 13; V{n % 89}) AppleWebKit/537.36 MicroMessenger/8.0.{n % 50}",
        "accept_language": "zh-CN,zh;q=0.9",
        "fingerprint": f"patient-{n:08d}-{rng.getrandbits(32):08x}",
    }
    return Patient(phone, rng.choices(PURPOSES, weights=(5, 3, 2))[0], client, resends=rng.random() < 0.15)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="sim-sms-"))
    keys = make_keys(work / "keys")
    clock = ManualClock(START)
    sms = sms_section(work, defaults={"lists": {"allow_ips": [HOSPITAL_WIFI]}})
    running, provider = await start_sms_gateway(work, keys, f"sqlite:///{work / 'gateway.sqlite3'}", sms, clock)
    sms_service = service(running)
    app = SmsApp(ApiClient(running.url, keys.app, keys.gateway.public()), sms_service.captcha)
    span = args.minutes * 60.0
    pool = [f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            for _ in range(args.ip_pool)]  # fmt: skip
    events: list[Event] = []
    seq = iter(range(10**9))
    for _ in range(args.attack):
        heapq.heappush(events, Event(START + rng.uniform(0, span), next(seq), "attack", None))
    patients = [patient(rng, n) for n in range(args.patients)]
    for p in patients:
        heapq.heappush(events, Event(START + rng.uniform(0, span), next(seq), "ask", p))
    attack_sent = 0
    refusals: dict[str, int] = {}
    try:
        while events:
            event = heapq.heappop(events)
            clock.now = event.at
            if event.kind == "attack":
                phone = rng.choice(TARGET_SEGMENTS) + f"{rng.randrange(10**4):04d}"
                await sms_service.flush()
                before = len(provider.sent)
                status, body = await app.otp(phone, rng.choice(PURPOSES), client_info=attack_client(rng, pool))
                await sms_service.flush()
                attack_sent += len(provider.sent) - before
                if status != 200:
                    code = body["error"]["code"]
                    refusals[code] = refusals.get(code, 0) + 1
                continue
            p: Patient = event.who
            if event.kind in ("ask", "resend"):
                status, body, asked = await app.otp_solving(p.phone, p.purpose, client_info=p.client)
                p.asked_captcha |= asked
                if status != 200:
                    p.refused = True
                    continue
                if event.kind == "ask" and p.resends:
                    heapq.heappush(events, Event(event.at + 70, next(seq), "resend", p))
                else:
                    heapq.heappush(events, Event(event.at + 20, next(seq), "verify", p))
            elif event.kind == "verify":
                await sms_service.flush()
                received = provider.to(p.phone)
                if received:
                    _, answer = await app.verify(p.phone, received[-1].code, p.purpose)
                    p.verified = answer["verified"]
                p.refused |= not p.verified
        await sms_service.flush()
    finally:
        await app.api.close()
        await running.stop()
    legit_refused = sum(p.refused for p in patients)
    captcha_rate = sum(p.asked_captcha for p in patients) / max(1, len(patients))
    print(f"attack: {args.attack} attempts from {args.ip_pool} addresses into {len(TARGET_SEGMENTS)} segments")
    print(f"  SMS that got through: {attack_sent} ({attack_sent / max(1, args.attack):.2%})")
    print(f"  answers other than 'sent': {dict(sorted(refusals.items()))}")
    print(f"patients: {len(patients)}, verified {sum(p.verified for p in patients)}")
    print(f"  refused: {legit_refused}; asked for a captcha: {captcha_rate:.1%}")
    print(f"SMS sent in all: {len(provider.sent)}")
    return {
        "attack_sms_sent": attack_sent,
        "attack_attempts": args.attack,
        "legit_refused": legit_refused,
        "legit_captcha_rate": round(captcha_rate, 4),
    }


def main(argv: list[str] | None = None) -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", type=int, default=3000, help="attack requests")
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--minutes", type=int, default=120, help="simulated time the traffic spreads over")
    parser.add_argument("--ip-pool", type=int, default=5000, help="addresses the attack rotates through")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
