"""The PRISM knobs and counters of a guest kernel (guest-kernel/patches, prism.rst)."""

from __future__ import annotations

KNOBS = "/proc/sys/net/core"
RX0_FLAG = "/sys/class/net/eth0/queues/rx-0/prism_priority"
COUNTERS = "/proc/net/prism"
MODES = {0: "off", 1: "PRISM-batch", 2: "PRISM-sync"}
# dmesg lines that mean the kernel is unhealthy (the same list as tests/kernel/guest/prism-test).
DMESG_BAD = ("WARNING:|BUG:|Oops|general protection|KASAN|UBSAN|Call Trace|RCU stall|"
             "soft lockup|hung task|Dead loop")


def mode_command(mode: int) -> str:
    """Sets prism_mode and checks that it took (a vanilla kernel has no such file)."""
    if mode not in MODES:
        raise ValueError(f"PRISM mode must be 0 (off), 1 (batch) or 2 (sync), not {mode!r}")
    return f"echo {mode} > {KNOBS}/prism_mode && [ \"$(cat {KNOBS}/prism_mode)\" = {mode} ]"


def read_mode_command() -> str:
    """Prints the mode, or `none` on a kernel without PRISM."""
    return f"cat {KNOBS}/prism_mode 2>/dev/null || echo none"
