"""``his-gateway``: placeholder until the gateway is built, so the console script fails with a clear word."""

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "his-gateway: the cloud gateway is not built yet in this release; only the bridge agent "
        "(his-bridge) and the sandbox (his-sandbox) are available.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
