"""A small filesystem of its own for host-fault tests: a tmpfs, or a loop-mounted ext4 image where tmpfs cannot
be mounted. It fails loudly instead of skipping, because CI runs as root and must exercise these tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True)


@contextlib.contextmanager
def small_filesystem(mountpoint: Path, size_kib: int) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    tried = _run("mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(mountpoint))
    image = None
    if tried.returncode != 0:
        image = mountpoint.parent / f"{mountpoint.name}.img"
        with image.open("wb") as f:
            f.truncate(max(size_kib, 2048) * 1024)
        made = _run("mkfs.ext4", "-q", "-F", str(image))
        loop = _run("mount", "-o", "loop", str(image), str(mountpoint)) if made.returncode == 0 else made
        if loop.returncode != 0:
            raise AssertionError(
                f"cannot mount a small filesystem at {mountpoint} (tmpfs: {tried.stderr.strip()}; "
                f"loop: {loop.stderr.strip()}); these tests need root"
            )
    try:
        yield mountpoint
    finally:
        _run("umount", "-l", str(mountpoint))
        if image is not None:
            image.unlink(missing_ok=True)


def fill(directory: Path, leave_bytes: int = 0, name: str = "filler") -> Path:
    """Write a file until only ``leave_bytes`` remain free on ``directory``'s filesystem (or it is full)."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    chunk = b"\0" * 65536
    try:
        while (free := shutil.disk_usage(directory).free) > leave_bytes:
            os.write(fd, chunk[: max(1, min(len(chunk), free - leave_bytes))])
    except OSError:
        pass
    finally:
        os.close(fd)
    return path
