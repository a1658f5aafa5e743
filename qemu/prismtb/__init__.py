"""prismtb: the prism-vnic testbed, one package for every harness.

It owns the parts a booted-guest experiment is made of, each in one place:

    switch    prism-vnic (or a stand-in backend): its flags, control socket, stop contract
    dpdk      DPDK's testpmd as a virtio-user frontend or as DPDK's vhost PMD backend
    procs     child processes: started pinned, ready on a condition, paused, stopped, cleaned
    guest     a QEMU guest on a vhost-user port, driven through its serial console
    qemu      the QEMU binary: version, accelerator, the command lines
    kernel    guest kernels (guest-kernel/build, cached) and single-guest scenario boots
    image     guest images (images/build-initramfs, cached by content)
    overlay   the container overlay (VXLAN on a bridge, netns containers on veth)
    netns     host network namespaces on tap ports of prism-vnic
    knobs     the PRISM knobs and counters of a guest kernel
    parsers   parsers of tool output (sockperf, iperf3, /proc/net/prism, QEMU's version)
    topology  the testbed's topology files (TOML)
    testbed   the `qemu/testbed` command (up, status, exec, mode, down)
    interp    the interpreter every script runs under

Importable without path tricks: scripts in qemu/ find it next to them, benches/ through its
`prismtb` link, pytest through tests/pytest.ini (pythonpath).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
