"""Build the offline install bundle: one archive with the wheels of the agent and every runtime dependency for a
target Python and platform, install.sh, the systemd unit, the example config, the profiles and the monitoring
files. Building needs the package index; installing from the bundle needs no network at all.

    scripts/make-bundle [--out dist] [--python-version 3.11 --platform manylinux2014_x86_64]

Without --python-version/--platform the wheels are for this interpreter and machine (sdists are built here);
with them, pip picks binary wheels for the target and refuses a dependency that has none.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "tests"
)


def version() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg["metadata"]["version"]


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def build_wheels(wheels: Path, python_version: str | None, platforms: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="his-bridge-src-") as tmp:
        # A copy, so that the build's egg-info and build/ never land in (or race in) the working tree.
        src = Path(tmp) / "src"
        shutil.copytree(REPO, src, ignore=SOURCE_IGNORE)
        pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(src))
    [agent] = wheels.glob("his_bridge-*.whl")
    if python_version or platforms:
        target = ["--only-binary=:all:", "--implementation", "cp"]
        target += ["--python-version", python_version or f"{sys.version_info[0]}.{sys.version_info[1]}"]
        for platform in platforms:
            target += ["--platform", platform]
        pip("download", "--quiet", "--dest", str(wheels), *target, str(agent))
    else:
        pip("wheel", "--quiet", "--wheel-dir", str(wheels), str(agent))


def make_bundle(out: Path, python_version: str | None = None, platforms: list[str] | None = None) -> Path:
    platforms = platforms or []
    v = version()
    py = python_version or f"{sys.version_info[0]}.{sys.version_info[1]}"
    plat = "-".join(platforms) or sysconfig.get_platform().replace("-", "_")
    name = f"his-bridge-{v}"
    with tempfile.TemporaryDirectory(prefix="his-bridge-bundle-") as tmp:
        root = Path(tmp) / name
        wheels = root / "wheels"
        wheels.mkdir(parents=True)
        build_wheels(wheels, python_version, platforms)
        shutil.copy2(REPO / "scripts" / "bundle" / "install.sh", root / "install.sh")
        shutil.copy2(REPO / "config" / "systemd" / "his-bridge.service", root / "his-bridge.service")
        shutil.copy2(REPO / "config" / "bridge.example.toml", root / "bridge.example.toml")
        shutil.copy2(REPO / "docs" / "OPERATIONS.md", root / "OPERATIONS.md")
        shutil.copytree(REPO / "config" / "profiles", root / "profiles")
        shutil.copytree(REPO / "config" / "monitoring", root / "monitoring")
        (root / "VERSION").write_text(v + "\n")
        (root / "PYTHON_VERSION").write_text(py + "\n")
        (root / "PLATFORM").write_text(plat + "\n")
        sums = [
            f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root)}"
            for p in sorted(root.rglob("*"))
            if p.is_file()
        ]
        (root / "SHA256SUMS").write_text("\n".join(sums) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        archive = out / f"{name}-py{py.replace('.', '')}-{plat}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(root, arcname=name)
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make-bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "dist"), help="folder for the archive (default dist/)")
    parser.add_argument("--python-version", help="target Python, e.g. 3.11 (default: this interpreter's)")
    parser.add_argument("--platform", action="append", help="target platform tag, e.g. manylinux2014_x86_64")
    args = parser.parse_args(argv)
    print(make_bundle(Path(args.out), args.python_version, args.platform))
    return 0


if __name__ == "__main__":
    sys.exit(main())
