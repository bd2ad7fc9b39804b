"""A sandbox of Tencent Cloud's API 3.0 for SMS (``SendSms``) and captcha (``DescribeCaptchaResult``), checking the
TC3-HMAC-SHA256 signature of every request the way Tencent Cloud does."""

from sandbox.tencentcloud.server import TencentCloudSandbox, start_tencent_sandbox

__all__ = ["TencentCloudSandbox", "start_tencent_sandbox"]
