"""SMS verification codes that cannot be pumped (短信防盗刷).

Hospital apps ask for a code (``POST /v1/sms/otp``) and check it (``POST /v1/sms/verify``). Between the request
and the SMS provider stand layers, each configured per hospital and purpose: block and allow lists, per-IP,
per-device and per-number-segment velocity (escalating to a captcha), per-phone resend interval and caps, and
a daily budget with a circuit breaker. Counters live in the gateway's database or in Redis.
"""
