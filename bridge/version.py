from importlib.metadata import PackageNotFoundError, version


def agent_version() -> str:
    try:
        return version("his-bridge")
    except PackageNotFoundError:
        return "0+unknown"
