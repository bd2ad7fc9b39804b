#!/usr/bin/env python3
"""Simulate SMS pumping (短信盗刷) against the gateway, mixed with a morning of patients.

    .venv/bin/python scripts/sim_sms_attack.py [--attack 3300] [--patients 300] [--minutes 120] [--seed 7]
        [--strategies sequential,low_slow,botnet,no_client,ua_only] [--farm-solve-rate 0.3] [--farm-cost 0.003]

One gateway with the default ``[sms]`` policy (plus the hospital's Wi-Fi egress on the allow list, as the docs
advise) runs on SQLite with the sandbox SMS provider and captcha, in front of the sandbox HIS through a real
bridge agent (the known-patient check asks it). Every request goes through the signed business API; time is
simulated (a manual clock), so a morning passes in a few minutes.

Attack strategies (``--attack`` attempts shared in the issue's proportions; purposes mixed; every attacker
buys captcha solutions from a farm that solves ``--farm-solve-rate`` of the challenges at ``--farm-cost`` CNY a
challenge):

- ``sequential``: consecutive numbers in one 号段, a new address from one /16 and a random fingerprint per request;
- ``low_slow``: ~400 valid-looking numbers, each hit 1–4 times 65–90 s apart, from 500 proxy addresses;
- ``botnet``: 150 device profiles copied from real patients, replayed from 3,000 addresses;
- ``no_client``: no ``client`` object at all;
- ``ua_only``: only a user agent and a language in ``client``.

Known gaps, not run unless named (``--strategies all``): ``identity_farm`` (a few dozen real WeChat accounts
whose openids the app vouches for, each from a fresh address and device), ``onsite`` (a pump on the hospital's
own Wi-Fi), ``patient_numbers`` (numbers of real patients, pumped to harass them).

The patients: binding and payment patients are on file at the HIS (binding ones give their card number);
login patients are on file at 70 %; 90 % come through a channel app that names them (openid), 35 % are on
the hospital Wi-Fi; each asks once (15 % press "resend" after 70 s), solves a captcha if asked, and types in
the code 20 s after asking.

The last line is one JSON object: ``attack_sms_sent``, ``attack_attempts``, ``legit_refused``,
``legit_captcha_rate``, ``legit_unvouched`` and ``legit_unvouched_refused`` (patients nothing vouches for: not on
file, no identity, not on the Wi-Fi — the one kind a refusing scope can refuse), ``by_strategy`` (attempts, sent,
captchas solved, cost) and ``attacker_cost_per_sms`` (CNY the farm cost per SMS obtained; null when none was).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import logging
import random
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file from anywhere: import the repo's packages
    sys.path.insert(0, str(REPO))

import structlog  # noqa: E402

from gateway.sms.clock import ManualClock  # noqa: E402
from tests.support.gateway_rig import ApiClient, make_keys  # noqa: E402
from tests.support.sms_rig import SmsApp, service, sms_section, start_his_rig, start_sms_gateway  # noqa: E402

CARRIER_PREFIXES = ("130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152", "155",
                    "156", "158", "159", "166", "175", "176", "177", "180", "181", "182", "186", "187", "188",
                    "189", "191", "198", "199")  # fmt: skip
HOSPITAL_WIFI = "100.64.10.1"
PURPOSES = ("binding", "payment", "login")
START = 1_800_000_000.0
SHARES = {"sequential": 900, "low_slow": 1000, "botnet": 800, "no_client": 300, "ua_only": 300}
EXTRA = {"identity_farm": 300, "onsite": 300, "patient_numbers": 300}


def random_phone(rng: random.Random) -> str:
    return rng.choice(CARRIER_PREFIXES) + f"{rng.randrange(10**8):08d}"


def random_ip(rng: random.Random) -> str:
    return f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def desktop(rng: random.Random) -> dict[str, Any]:
    return {
        "user_agent": f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/12{rng.randint(0, 9)}.0.0.0 Safari/537.36",
        "accept_language": rng.choice(["zh-CN,zh;q=0.9", "zh-CN", "en-US,en;q=0.8"]),
    }


@dataclass
class Patient:
    phone: str
    purpose: str
    client: dict[str, Any]
    extra: dict[str, Any]
    resends: bool
    asked_captcha: bool = False
    refused: bool = False
    verified: bool = False
    on_file: bool = False
    answer: str = ""


@dataclass
class Tally:
    attempts: int = 0
    sent: int = 0
    solved: int = 0
    farm_cost: float = 0.0
    answers: Counter[str] = field(default_factory=Counter)


@dataclass(order=True)
class Event:
    at: float
    seq: int
    kind: str = field(compare=False)
    who: Any = field(compare=False)


class Attack:
    """The attackers' request generators: each call gives (phone, purpose, client, extra) for one attempt."""

    def __init__(self, rng: random.Random, patients: list[Patient]) -> None:
        self.rng = rng
        segment = rng.choice(CARRIER_PREFIXES) + f"{rng.randrange(10**4):04d}"
        self.sequence = iter(f"{segment}{n:04d}" for n in range(10**4))
        self.slash16 = f"{rng.randrange(1, 224)}.{rng.randrange(256)}"
        self.proxies = [(random_ip(rng), f"{rng.getrandbits(64):016x}", desktop(rng)) for _ in range(500)]
        self.slow_numbers = [random_phone(rng) for _ in range(400)]
        self.bot_ips = [random_ip(rng) for _ in range(3000)]
        self.profiles = [{k: v for k, v in p.client.items() if k != "ip"} for p in patients[:150]]
        self.accounts = [f"o{rng.getrandbits(96):024x}" for _ in range(40)]
        self.victims = [p.phone for p in patients]

    def purpose(self) -> str:
        return self.rng.choice(PURPOSES)

    def sequential(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        ip = f"{self.slash16}.{self.rng.randrange(256)}.{self.rng.randrange(1, 255)}"
        return (
            next(self.sequence),
            {"ip": ip, **desktop(self.rng), "fingerprint": f"{self.rng.getrandbits(64):016x}"},
            {},
        )

    def low_slow(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        ip, fingerprint, browser = self.rng.choice(self.proxies)
        return self.rng.choice(self.slow_numbers), {"ip": ip, **browser, "fingerprint": fingerprint}, {}

    def botnet(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        profile = self.rng.choice(self.profiles) if self.profiles else desktop(self.rng)
        return random_phone(self.rng), {**profile, "ip": self.rng.choice(self.bot_ips)}, {}

    def no_client(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        return random_phone(self.rng), {}, {}

    def ua_only(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        return random_phone(self.rng), desktop(self.rng), {}

    def identity_farm(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        client = {"ip": random_ip(self.rng), **desktop(self.rng), "fingerprint": f"{self.rng.getrandbits(64):016x}"}
        identity = {"kind": "wechat_openid", "id": self.rng.choice(self.accounts)}
        return random_phone(self.rng), client, {"identity": identity}

    def onsite(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        client = {"ip": HOSPITAL_WIFI, **desktop(self.rng), "fingerprint": f"{self.rng.getrandbits(64):016x}"}
        return random_phone(self.rng), client, {}

    def patient_numbers(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        client = {"ip": random_ip(self.rng), **desktop(self.rng), "fingerprint": f"{self.rng.getrandbits(64):016x}"}
        return self.rng.choice(self.victims), client, {}


def make_patient(rng: random.Random, n: int, hot_segment: str) -> Patient:
    phone = hot_segment + f"{rng.randrange(10**4):04d}" if rng.random() < 0.03 else random_phone(rng)
    on_wifi = rng.random() < 0.35
    client: dict[str, Any] = {
        "ip": HOSPITAL_WIFI if on_wifi else f"112.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        "user_agent": f"Mozilla/5.0 (Linux; Android 13; V{n % 89}) AppleWebKit/537.36 MicroMessenger/8.0.{n % 50}",
        "accept_language": "zh-CN,zh;q=0.9",
        "fingerprint": f"patient-{n:08d}-{rng.getrandbits(32):08x}",
    }
    purpose = rng.choices(PURPOSES, weights=(5, 3, 2))[0]
    extra: dict[str, Any] = {}
    if rng.random() < 0.9:
        extra["identity"] = {"kind": "wechat_openid", "id": f"o-patient-{n:06d}"}
    if purpose == "binding":
        extra["card_no"] = f"SIM{n:06d}"
    return Patient(phone, purpose, client, extra, resends=rng.random() < 0.15)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    work: Path = args.work
    keys = make_keys(work / "keys")
    clock = ManualClock(START)
    his = await start_his_rig(work / "his")
    sms = sms_section(work, defaults={"lists": {"allow_ips": [HOSPITAL_WIFI]}, "known_patients": {
        "binding": "require", "payment": "require", "login": "prefer"}})  # fmt: skip
    url = f"sqlite+aiosqlite:///{work / 'gateway.sqlite3'}"
    running, provider = await start_sms_gateway(work, keys, url, sms, clock, his=his.link)
    sms_service = service(running)
    app = SmsApp(ApiClient(running.url, keys.app, keys.gateway.public()), sms_service.captcha)
    span = args.minutes * 60.0
    strategies = list(SHARES) + list(EXTRA) if args.strategies == "all" else args.strategies.split(",")
    weights = {**SHARES, **EXTRA}
    unknown = set(strategies) - set(weights)
    if unknown:
        raise SystemExit(f"unknown strategies: {sorted(unknown)}")
    hot = rng.choice(CARRIER_PREFIXES) + f"{rng.randrange(10**4):04d}"
    patients = [make_patient(rng, n, hot) for n in range(args.patients)]
    for n, p in enumerate(patients):
        p.on_file = p.purpose != "login" or rng.random() < 0.7
        if p.on_file:
            his.his.state.add_patient(f"SIM{n:06d}", f"患者{n}", card_no=f"SIM{n:06d}", phone=p.phone)
    attack = Attack(rng, patients)
    attack.sequence = iter(f"{hot}{n:04d}" for n in range(10**4))
    events: list[Event] = []
    seq = iter(range(10**9))
    total = sum(weights[s] for s in strategies)
    tallies = {s: Tally() for s in strategies}
    for strategy in strategies:
        count = round(args.attack * weights[strategy] / total)
        for _ in range(count):
            heapq.heappush(events, Event(START + rng.uniform(0, span), next(seq), "attack", strategy))
    for p in patients:
        heapq.heappush(events, Event(START + rng.uniform(0, span), next(seq), "ask", p))
    follow_ups: dict[str, int] = {}
    try:
        while events:
            event = heapq.heappop(events)
            clock.now = event.at
            if event.kind in ("attack", "again"):
                strategy = event.who if event.kind == "attack" else event.who[0]
                make: Callable[[], tuple[str, dict[str, Any], dict[str, Any]]] = getattr(attack, strategy)
                phone, client, extra = make() if event.kind == "attack" else event.who[1]
                if strategy == "low_slow" and event.kind == "attack" and phone not in follow_ups:
                    follow_ups[phone] = rng.randint(0, 3)
                    at = event.at
                    for _ in range(follow_ups[phone]):
                        at += rng.uniform(65, 90)
                        heapq.heappush(events, Event(at, next(seq), "again", (strategy, (phone, client, extra))))
                await attempt(app, sms_service, provider, tallies[strategy], phone, client, extra, args, rng)
                continue
            p: Patient = event.who
            if event.kind in ("ask", "resend"):
                status, body, asked = await app.otp_solving(p.phone, p.purpose, client_info=p.client, **p.extra)
                p.asked_captcha |= asked
                if status != 200:
                    p.refused = True
                    p.answer = body["error"]["code"]
                    continue
                kind = "resend" if event.kind == "ask" and p.resends else "verify"
                heapq.heappush(events, Event(event.at + (70 if kind == "resend" else 20), next(seq), kind, p))
            elif event.kind == "verify":
                await sms_service.flush()
                received = [m for m in provider.to(p.phone) if m.purpose == p.purpose]
                if received:
                    _, answer = await app.verify(p.phone, received[-1].code, p.purpose)
                    p.verified = answer["verified"]
                if not p.verified:
                    p.refused, p.answer = True, "no code received"
        await sms_service.flush()
        escalations = await sms_service.escalations()
    finally:
        await app.api.close()
        await running.stop()
        await his.close()
        shutil.rmtree(work, ignore_errors=True)
    return report(args, patients, tallies, escalations)


async def attempt(
    app: SmsApp,
    sms_service: Any,
    provider: Any,
    tally: Tally,
    phone: str,
    client: dict[str, Any],
    extra: dict[str, Any],
    args: argparse.Namespace,
    rng: random.Random,
) -> None:
    """One attack attempt; a captcha goes to the farm, which solves some."""
    tally.attempts += 1
    await sms_service.flush()
    before = len(provider.sent)
    purpose = rng.choice(PURPOSES)
    status, body = await app.otp(phone, purpose, client_info=client, **extra)
    if status == 403 and body["error"]["code"] == "captcha_required":
        tally.farm_cost += args.farm_cost
        if rng.random() < args.farm_solve_rate:
            tally.solved += 1
            challenge = body["captcha"]["challenge_id"]
            answer = {"challenge_id": challenge, "token": app.solver.solve(challenge)}
            status, body = await app.otp(phone, purpose, client_info=client, captcha=answer, **extra)
    await sms_service.flush()
    tally.sent += len(provider.sent) - before
    tally.answers["sent" if status == 200 else body["error"]["code"]] += 1


def report(
    args: argparse.Namespace, patients: list[Patient], tallies: dict[str, Tally], escalations: list[dict[str, Any]]
) -> dict[str, Any]:
    headline = [t for s, t in tallies.items() if s in SHARES]
    attempts = sum(t.attempts for t in headline)
    sent = sum(t.sent for t in headline)
    cost = sum(t.farm_cost for t in headline)
    refused = sum(p.refused for p in patients)
    unvouched = [p for p in patients if not (p.on_file or "identity" in p.extra or p.client["ip"] == HOSPITAL_WIFI)]
    captcha_rate = sum(p.asked_captcha for p in patients) / max(1, len(patients))
    print(f"attack (farm solves {args.farm_solve_rate:.0%} at {args.farm_cost} CNY a challenge):")
    for strategy, t in tallies.items():
        gap = "" if strategy in SHARES else "   [known gap: not in the totals]"
        print(f"  {strategy:16} {t.attempts:5} attempts, {t.sent:4} SMS ({t.sent / max(1, t.attempts):.2%}),"
              f" {t.solved} captchas solved; answers {dict(sorted(t.answers.items()))}{gap}")  # fmt: skip
    print(f"  in all: {sent} of {attempts} attempts got an SMS ({sent / max(1, attempts):.2%})")
    print(f"patients: {len(patients)}, verified {sum(p.verified for p in patients)}, refused {refused},"
          f" asked for a captcha {captcha_rate:.1%}")  # fmt: skip
    for p in patients:
        if p.refused:
            known = "on file" if p.on_file else "not on file"
            who = "with" if "identity" in p.extra else "without"
            print(f"  refused: a {p.purpose} patient, {known}, {who} identity, from {p.client['ip']}: {p.answer}")
    print(f"scopes escalated at the end: {[(e['scope'], e['level']) for e in escalations if e['level']]}")
    by_strategy = {
        s: {
            "attempts": t.attempts,
            "sent": t.sent,
            "captchas_solved": t.solved,
            "farm_cost_cny": round(t.farm_cost, 3),
            "cost_per_sms": round(t.farm_cost / t.sent, 3) if t.sent else None,
            "in_totals": s in SHARES,
        }
        for s, t in tallies.items()
    }
    return {
        "attack_sms_sent": sent,
        "attack_attempts": attempts,
        "legit_refused": refused,
        "legit_captcha_rate": round(captcha_rate, 4),
        "legit_unvouched": len(unvouched),
        "legit_unvouched_refused": sum(p.refused for p in unvouched),
        "by_strategy": by_strategy,
        "attacker_cost_per_sms": round(cost / sent, 3) if sent else None,
    }


def main(argv: list[str] | None = None) -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", type=int, default=3300, help="attack attempts, shared among the strategies")
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--minutes", type=int, default=120, help="simulated time the traffic spreads over")
    parser.add_argument("--strategies", default=",".join(SHARES), help="comma-separated, or 'all' (adds known gaps)")
    parser.add_argument("--farm-solve-rate", type=float, default=0.3)
    parser.add_argument("--farm-cost", type=float, default=0.003, help="CNY the farm charges per challenge")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    shm = Path(
        "/dev/shm"
    )  # the databases' fsyncs, not the defences, dominate on disk; a simulation needs no durability
    args.work = Path(tempfile.mkdtemp(prefix="sim-sms-", dir=shm if shm.is_dir() else None))
    result = asyncio.run(run(args))
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
