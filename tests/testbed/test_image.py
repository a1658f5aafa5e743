"""The guest image with the paper's workloads (images/build-initramfs --workloads): every tool
and every shared library it needs is in the archive, and a second build is the cached one."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest

from prismtb.image import ImageError, build_initramfs

TOOLS = ["/usr/bin/sockperf", "/usr/bin/iperf3", "/usr/bin/memcached", "/usr/bin/memcslap",
         "/usr/bin/memcaslap", "/usr/bin/memcstat", "/usr/sbin/nginx", "/usr/bin/wrk"]


def cpio_names(image: Path) -> set[str]:
    res = subprocess.run(["cpio", "-it", "--quiet"], input=gzip.decompress(image.read_bytes()),
                         capture_output=True, check=True)
    return {"/" + n.removeprefix("./") for n in res.stdout.decode().splitlines()}


def libraries(binary: str) -> set[str]:
    """The in-image paths of a host binary's libraries (merged /usr, as the builder puts them)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    libs = set()
    for line in out.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            path = os.path.normpath(path)
            libs.add("/usr" + path if path.startswith(("/lib/", "/lib64/")) else path)
    return libs


@pytest.fixture(scope="module")
def image() -> Path:
    try:
        return build_initramfs(workloads=True)
    except ImageError as e:
        pytest.fail(str(e), pytrace=False)


def test_the_workload_image_holds_every_tool_with_its_libraries_and_nginx_config(image):
    names = cpio_names(image)
    missing = [t for t in TOOLS if t not in names]
    assert not missing, f"tools missing from {image}: {missing}"
    for tool in TOOLS:
        absent = sorted(libraries(tool) - names)
        assert not absent, f"{tool}'s libraries missing from {image}: {absent}"
    for f in ("/etc/nginx/nginx.conf", "/etc/nginx/mime.types", "/srv/www/index.html",
              "/srv/www/64k.bin", "/srv/www/1m.bin"):
        assert f in names


def test_a_second_build_is_the_cached_image(image):
    res = subprocess.run([str(Path(__file__).resolve().parents[2] / "images" / "build-initramfs"),
                          "--no-modules", "--workloads"], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == str(image)
    assert f"cached: {image}" in res.stderr
