"""guest-kernel/build --source: a kernel developer's own tree, checked before anything is
compiled: an option of the config fragments that the tree's Kconfig drops fails the build,
naming the option, and the tree itself is never changed. (A whole build from a tree is the
same build as from Debian's source, which tests/kernel covers.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from prismtb import REPO
from prismtb.kernel import KernelError, build_kernel

TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    if not TARBALL.exists():
        pytest.skip(f"{TARBALL} missing (apt-get install linux-source-6.1)")
    root = tmp_path_factory.mktemp("linux")
    subprocess.run(["tar", "-xJf", str(TARBALL), "-C", str(root), "--strip-components=1"], check=True)
    return root


def test_a_tree_whose_kconfig_drops_a_fragment_option_fails_naming_it(tree, tmp_path, monkeypatch):
    kconfig = tree / "drivers" / "net" / "Kconfig"
    text = kconfig.read_text()
    # Without its Kconfig entry, olddefconfig silently drops CONFIG_VXLAN=y.
    start = text.index("config VXLAN\n")
    end = text.index("\nconfig ", start + 1)
    kconfig.write_text(text[:start] + text[end + 1:])
    monkeypatch.setenv("PRISM_CACHE_DIR", str(tmp_path / "cache"))
    before = sorted(p.name for p in tree.iterdir())
    res = subprocess.run([str(REPO / "guest-kernel" / "build"), "--flavour", "vanilla", "--source", str(tree)],
                         capture_output=True, text=True, env=os.environ, timeout=3600)
    assert res.returncode != 0
    assert "config: CONFIG_VXLAN=y not honoured" in res.stderr, res.stderr[-2000:]
    assert "config fragments not honoured" in res.stderr
    assert "building bzImage" not in res.stderr
    assert sorted(p.name for p in tree.iterdir()) == before  # no .config, no build in the tree


def test_a_directory_that_is_not_a_kernel_tree_is_refused(tmp_path):
    with pytest.raises(KernelError, match=f"--source {tmp_path}: not a Linux source tree"):
        build_kernel("prism", source=tmp_path, progress=False)
