"""Who delivers the SMS. A provider gets the number, the approved template and its parameters; the sandbox one
records what it would have sent (in memory, and as JSON lines in ``record_file`` so that tests can read what
several gateway processes sent). Tencent Cloud SMS (``gateway.sms.tencent``) implements ``SmsProvider`` too;
``sms.provider.kind`` picks one (``gateway.sms.vendors``)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

TEMPLATES = {
    "binding": "【{signature}】您正在绑定就诊卡，验证码 {code}，{minutes} 分钟内有效。如非本人操作请忽略。",
    "payment": "【{signature}】您正在确认支付，验证码 {code}，{minutes} 分钟内有效。请勿告诉他人。",
    "login": "【{signature}】您的登录验证码 {code}，{minutes} 分钟内有效。",
}


@dataclass(frozen=True)
class SmsMessage:
    phone: str
    hospital_id: str
    purpose: str
    code: str
    minutes: int


class SmsProvider(Protocol):
    name: str

    async def send(self, message: SmsMessage) -> None:
        """Hand the message over; raise when the provider refused it or could not be reached."""

    async def close(self) -> None: ...


@dataclass
class SandboxSmsProvider:
    signature: str = "医院"
    record_file: Path | None = None
    name: str = "sandbox"
    sent: list[SmsMessage] = field(default_factory=list)

    def text(self, message: SmsMessage) -> str:
        return TEMPLATES[message.purpose].format(signature=self.signature, code=message.code, minutes=message.minutes)

    async def send(self, message: SmsMessage) -> None:
        self.sent.append(message)
        if self.record_file is not None:
            line = json.dumps({**asdict(message), "text": self.text(message)}, ensure_ascii=False) + "\n"
            fd = os.open(self.record_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def to(self, phone: str) -> list[SmsMessage]:
        return [m for m in self.sent if m.phone == phone]

    async def close(self) -> None:
        return None


def read_records(path: Path) -> list[dict[str, object]]:
    """What sandbox providers (of any number of processes) recorded in ``path``."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
