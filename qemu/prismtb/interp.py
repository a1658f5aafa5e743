"""The interpreter every script runs under: the one whose packages .ci/install-deps provides
(Debian's python3 with python3-matplotlib and python3-pytest), whatever `python3` comes first
on PATH. A script started by another interpreter (a pyenv or venv python3) would silently
lack matplotlib, so it is re-executed under this one instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SYSTEM_PYTHON = Path("/usr/bin/python3")
SYSTEM_PREFIX = "/usr"


def is_system_python(executable: str, prefix: str) -> bool:
    """Whether (sys.executable, sys.prefix) is the install step's interpreter: a venv made from
    it has the same binary but another prefix, and lacks the Debian packages."""
    try:
        same = Path(executable).resolve() == SYSTEM_PYTHON.resolve()
    except OSError:
        return False
    return same and prefix == SYSTEM_PREFIX


def ensure_system_python() -> None:
    """Re-executes the running script under SYSTEM_PYTHON unless it already runs there.
    Call it first thing in a script's main; it returns only under the right interpreter."""
    if is_system_python(sys.executable, sys.prefix):
        os.environ.pop("PRISMTB_REEXEC", None)
        return
    if not SYSTEM_PYTHON.exists():
        sys.exit(f"{SYSTEM_PYTHON} not found: run .ci/install-deps (as root) to install it "
                 "with the packages the scripts need")
    if os.environ.get("PRISMTB_REEXEC") == "1":
        sys.exit(f"re-executed under {SYSTEM_PYTHON} but still running {sys.executable} "
                 f"(prefix {sys.prefix}): check that {SYSTEM_PYTHON} is Debian's python3")
    os.environ["PRISMTB_REEXEC"] = "1"
    script = os.path.abspath(sys.argv[0])
    os.execv(str(SYSTEM_PYTHON), [str(SYSTEM_PYTHON), script, *sys.argv[1:]])
