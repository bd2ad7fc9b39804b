"""The SMS budget: a gateway-wide daily budget (and optionally one per hospital and purpose), and a circuit
breaker on the rate of spending. When too many SMS went out in the breaker's window, or most of the day's
budget is gone, every request needs a captcha; when the budget is spent, requests are refused as
``sms_unavailable`` until the next day. What a pump can burn is bounded even when every other layer is fooled."""

from __future__ import annotations

from gateway.sms.config import DAY_S, BreakerConfig, Policy
from gateway.sms.layers import Layer, OtpRequest, Verdict
from gateway.sms.limits_store import Counters, Window

GLOBAL = "budget/all"


class BudgetLayer(Layer):
    name = "budget"

    def __init__(self, counters: Counters, daily_budget: int, breaker: BreakerConfig) -> None:
        self.counters = counters
        self.daily_budget = daily_budget
        self.breaker = breaker

    @staticmethod
    def _scoped(req: OtpRequest) -> str:
        return f"budget/{req.hospital_id}/{req.purpose}"

    async def assess(self, req: OtpRequest, policy: Policy) -> list[Verdict]:
        w = self.breaker.window_s
        spent, scoped, burst_now, burst_before = await self.counters.peek(
            [
                Window(GLOBAL, DAY_S),
                Window(self._scoped(req), DAY_S),
                Window(f"{GLOBAL}/burst", w),
                Window(f"{GLOBAL}/burst", w, back=1),
            ]
        )
        if spent >= self.daily_budget:
            return [Verdict(self.name, "daily_budget_spent", refusal="unavailable")]
        if policy.daily_budget is not None and scoped >= policy.daily_budget:
            return [Verdict(self.name, "hospital_budget_spent", refusal="unavailable")]
        verdicts = []
        if max(burst_now, burst_before) >= self.breaker.max_sends:
            verdicts.append(Verdict(self.name, "breaker_open", points=policy.captcha_threshold))
        if spent >= self.breaker.budget_ratio * self.daily_budget:
            verdicts.append(Verdict(self.name, "budget_low", points=policy.captcha_threshold))
        return verdicts

    async def charge(self, req: OtpRequest, policy: Policy) -> list[Verdict]:
        spent, scoped, _ = await self.counters.hit(
            [Window(GLOBAL, DAY_S), Window(self._scoped(req), DAY_S), Window(f"{GLOBAL}/burst", self.breaker.window_s)]
        )
        if spent > self.daily_budget:
            return [Verdict(self.name, "daily_budget_spent", refusal="unavailable")]
        if policy.daily_budget is not None and scoped > policy.daily_budget:
            return [Verdict(self.name, "hospital_budget_spent", refusal="unavailable")]
        return []
