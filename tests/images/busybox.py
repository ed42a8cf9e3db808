"""A tiny container image for the tests, made here and never pulled: Debian's static busybox in an
otherwise empty root file system, imported into the local image store as `ade-test-busybox`."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

IMAGE = "ade-test-busybox"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


def _busybox() -> Path | None:
    """Debian's busybox-static (scripts/setup installs it); a dynamic busybox would not run alone."""
    return next((Path(c) for c in BUSYBOX_CANDIDATES if Path(c).is_file()), None)


def _rootfs_tar(busybox: Path) -> bytes:
    listed = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    applets = listed.stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "etc", "tmp", "ade"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(busybox), "bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/tmp:/bin/sh\n"),
            ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_image(runtime: str = "podman") -> str | None:
    """Import the image unless the runtime has it already (re-importing would leave dangling images);
    None when there is no runtime or no static busybox."""
    if shutil.which(runtime) is None or (busybox := _busybox()) is None:
        return None
    if subprocess.run([runtime, "image", "exists", IMAGE], capture_output=True, check=False).returncode == 0:
        return IMAGE
    done = subprocess.run(
        [runtime, "import", "-", IMAGE], input=_rootfs_tar(busybox), capture_output=True, check=False
    )
    return IMAGE if done.returncode == 0 else None
