"""The testbed package's own units, without QEMU: the command lines it builds and its parsers
of tool output, on samples recorded from the real tools (tests/testbed/samples/)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from prismtb import REPO, dpdk, image, kernel, knobs, qemu, switch
from prismtb.guest import GuestConfig
from prismtb.interp import SYSTEM_PYTHON, is_system_python
from prismtb.overlay import OverlayParams, container_ip, overlay_steps
from prismtb.procs import Child, ChildError, pid_alive, signals_deferred
from prismtb.parsers import (iperf_receiver_mbits, iperf_udp_summary, parse_sockperf, prism_counters,
                             protocol_lines, qemu_version, stats_summary, vcpu_threads)
from prismtb.shell import parse_status
from prismtb.switch import Switch, SwitchError, prism_vnic_argv

SAMPLES = Path(__file__).resolve().parent / "samples"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


# --- command lines -------------------------------------------------------------------------

def test_prism_vnic_gets_a_port_per_socket_a_tap_per_device_and_its_control_socket():
    argv = prism_vnic_argv(Path("/bin/prism-vnic"), {"vm1": Path("/d/vm1.sock")}, {"h1": "tb-h1"}, 4,
                           Path("/d/control.sock"), ["--link-rate", "10G"])
    assert argv == ["/bin/prism-vnic", "--port", "vm1=/d/vm1.sock", "--tap", "h1=tb-h1",
                    "--queues", "4", "--control", "/d/control.sock", "--link-rate", "10G"]


def test_a_guest_is_started_through_qemu_vm_with_its_options():
    cmd = GuestConfig(name="vm1", socket=Path("/d/vm1.sock"), ip="10.0.0.1/24", queues=2, smp=3,
                      mem="512M", kernel="/k/bzImage", initrd="/i/img", append="x=1",
                      extra_qemu_args=["-foo"]).command()
    assert cmd[0] == str(REPO / "qemu" / "vm")
    pairs = dict(zip(cmd[1::2], cmd[2::2]))
    assert pairs["--socket"] == "/d/vm1.sock" and pairs["--queues"] == "2"
    assert pairs["--smp"] == "3" and pairs["--mem"] == "512M" and pairs["--console"] == "stdio"
    assert pairs["--ip"] == "10.0.0.1/24" and pairs["--kernel"] == "/k/bzImage"
    assert cmd[-2:] == ["--", "-foo"]


def test_a_kernel_scenario_boots_under_tcg_without_reboot_and_without_a_nic():
    cmd = kernel.scenario_command(Path("/k"), Path("/i"), "knobs", mode=2, smp=1)
    assert cmd[cmd.index("-accel") + 1] == "tcg" and "-no-reboot" in cmd
    assert cmd[cmd.index("-nic") + 1] == "none"
    append = cmd[cmd.index("-append") + 1]
    assert "prism.test=knobs" in append and "prism.mode=2" in append
    assert append.endswith("-- /prism-test/prism-test")
    user = kernel.scenario_command(Path("/k"), Path("/i"), "queue", netdev_user=True)
    assert "user,id=n0" in user and "-nic" not in user


def test_kernel_build_takes_a_flavour_and_a_source_directory_and_its_output_is_parsed():
    assert kernel.build_command("prism", debug=True, source=Path("/src/linux"))[1:] == [
        "--flavour", "prism", "--debug", "--source", "/src/linux"]
    with pytest.raises(kernel.KernelError, match="flavour"):
        kernel.build_command("all")
    out = "vanilla=/c/vanilla-1/bzImage\nprism=/c/prism-2/bzImage\n"
    assert kernel.parse_build_output(out, "prism") == Path("/c/prism-2/bzImage")
    assert kernel.parse_build_output(out, "prism", debug=True) is None


def test_a_kernel_spec_that_is_neither_a_flavour_nor_a_file_is_refused(tmp_path):
    with pytest.raises(kernel.KernelError, match="neither vanilla nor prism nor a bzImage"):
        kernel.resolve_kernel(str(tmp_path / "missing"))
    bz = tmp_path / "bzImage"
    bz.write_bytes(b"x")
    assert kernel.resolve_kernel(str(bz)) == bz


def test_image_builder_options():
    cmd = image.initramfs_command(extra_bins=["/usr/bin/sockperf"], extra_files=["a:/b"], workloads=True)
    assert cmd[1:] == ["--no-modules", "--workloads", "--extra-bin", "/usr/bin/sockperf",
                       "--extra-file", "a:/b"]
    cmd = image.initramfs_command(modules_from=Path("/lib/modules/6.1.0"))
    assert cmd[1:] == ["--kernel-modules-from", "/lib/modules/6.1.0"]


def test_the_overlay_of_two_hosts_is_the_papers_vxlan_bridge_and_veth_at_mtu_1450():
    steps = overlay_steps(OverlayParams(), 1, "10.0.0.1", ["10.0.0.2"])
    assert "ip link add vxlan0 type vxlan id 42 dstport 4789 local 10.0.0.1 remote 10.0.0.2 dev eth0" in steps
    assert "ip link set vc1 mtu 1450 master br0 up" in steps
    assert "ip -n c1 addr add 192.168.42.1/24 dev eth0" in steps
    assert not any("fdb" in s for s in steps)


def test_overlay_parameters_set_containers_vni_and_addresses():
    params = OverlayParams(containers=2, vni=7, subnet="172.30.0")
    steps = overlay_steps(params, 2, "10.0.0.2", ["10.0.0.1", "10.0.0.3"])
    assert any("id 7 dstport 4789 local 10.0.0.2 dev eth0" in s for s in steps)
    assert "bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst 10.0.0.3" in steps
    assert "ip -n c2 addr add 172.30.0.18/24 dev eth0" in steps
    assert container_ip(params, 2, 1) == "172.30.0.2"
    for bad in (dict(containers=0), dict(vni=1 << 24), dict(subnet="10.0"), dict(dstport=0)):
        with pytest.raises(ValueError):
            OverlayParams(**bad)


def test_prism_mode_command_checks_the_value_took_and_refuses_other_modes():
    assert knobs.mode_command(2) == ('echo 2 > /proc/sys/net/core/prism_mode && '
                                     '[ "$(cat /proc/sys/net/core/prism_mode)" = 2 ]')
    with pytest.raises(ValueError, match="0 \\(off\\), 1 \\(batch\\) or 2"):
        knobs.mode_command(3)


def test_testpmd_as_the_frontend_of_case_c_is_one_lcore_polling_four_ports_on_one_cpu():
    """pcap -> virtio-user A, virtio-user B -> null, paired io forwarding; the prefix is the
    harness's own so two runs never share DPDK's runtime directory."""
    config = dpdk.Testpmd("fe-prism-c", [dpdk.PcapReplay(Path("/w/f.pcap")),
                                         dpdk.VirtioUser(Path("/w/a.sock"), "02:00:00:00:00:0a"),
                                         dpdk.VirtioUser(Path("/w/b.sock"), "02:00:00:00:00:0b"),
                                         dpdk.NullPort()], "io", 0, port_topology="paired")
    assert config.prefix(1234) == "fe-prism-c-1234"
    assert config.argv("fe-prism-c-1234") == [
        "dpdk-testpmd", "--lcores", "0@0,1@0", "--no-pci", "--no-huge", "-m", "1024",
        "--file-prefix", "fe-prism-c-1234",
        "--vdev", "net_pcap0,rx_pcap=/w/f.pcap,infinite_rx=1",
        "--vdev", "virtio_user0,path=/w/a.sock,queues=1,mac=02:00:00:00:00:0a",
        "--vdev", "virtio_user1,path=/w/b.sock,queues=1,mac=02:00:00:00:00:0b",
        "--vdev", "net_null0,no-rx=1",
        "--", "--nb-cores=1", "--no-lsc-interrupt", "-i", "--forward-mode=io", "--port-topology=paired"]


def test_a_pcap_source_for_a_frontend_with_four_queues_has_four_rx_queues():
    """testpmd refuses --rxq 4 on a pcap port with one rx_pcap (max_rx_queues 1)."""
    assert dpdk.PcapReplay(Path("/w/f.pcap"), 4).args() == \
        "rx_pcap=/w/f.pcap,rx_pcap=/w/f.pcap,rx_pcap=/w/f.pcap,rx_pcap=/w/f.pcap,infinite_rx=1"


def test_testpmd_as_dpdks_vhost_backend_forwards_from_the_start_with_jumbo_mbufs_above_1518():
    config = dpdk.Testpmd("be-dpdk-b", [dpdk.VhostPort(Path("/w/a.sock"), tso=True)], "txonly", 1,
                          interactive=False, frame=9000, txpkts=9000)
    assert config.argv("p")[config.argv("p").index("--"):] == [
        "--", "--nb-cores=1", "--no-lsc-interrupt", "--forward-mode=txonly", "--auto-start",
        "--txpkts=9000", "--mbuf-size=10240", "--max-pkt-len=9018", "--total-num-mbufs=16384"]
    assert "net_vhost0,iface=/w/a.sock,queues=1,tso=1" in config.argv("p")
    assert "--lcores" in config.argv("p") and "0@1,1@1" in config.argv("p")
    assert dpdk.jumbo_args(1518) == []


def test_testpmd_takes_what_a_sweep_varies_ring_sizes_burst_queues_and_frame():
    a = dpdk.VirtioUser(Path("/w/a.sock"), "02:00:00:00:00:0a", queues=2, queue_size=1024)
    b = dpdk.VirtioUser(Path("/w/b.sock"), queues=2, queue_size=256)
    argv = dpdk.Testpmd("fe", [a, b], "txonly", 0, txpkts=1518, frame=1518, burst=64, queues=2,
                        eth_peers={0: "02:00:00:00:00:0b"}).argv("p")
    assert "virtio_user0,path=/w/a.sock,queues=2,mac=02:00:00:00:00:0a,queue_size=1024" in argv
    assert "virtio_user1,path=/w/b.sock,queues=2,queue_size=256" in argv
    assert argv[argv.index("--"):] == [
        "--", "--nb-cores=1", "--no-lsc-interrupt", "-i", "--forward-mode=txonly", "--txpkts=1518",
        "--eth-peer=0,02:00:00:00:00:0b", "--burst=64", "--rxq=2", "--txq=2"]


def test_dpdks_runtime_directory_is_the_file_prefixs():
    assert dpdk.runtime_dir("fe-1").name == "fe-1" and dpdk.runtime_dir("fe-1").parent.name == "dpdk"


# --- parsers on recorded samples -----------------------------------------------------------

def test_sockperf_ping_pong_figures():
    res = parse_sockperf(sample("sockperf-ping-pong.txt"))
    assert res["sent"] == 41702 and res["received"] == 41701
    assert (res["dropped"], res["duplicated"], res["out_of_order"]) == (0, 0, 0)
    assert res["p50"] == 2.593 and res["p99"] == 6.371 and res["p99.999"] == 5668.94


def test_iperf3_udp_loss_and_receiver_rates():
    assert iperf_udp_summary(sample("iperf3-udp.txt")) == (0, 39)
    assert iperf_udp_summary(sample("iperf3-tcp.txt")) is None
    assert iperf_receiver_mbits(sample("iperf3-tcp.txt")) == pytest.approx(11600)
    assert iperf_receiver_mbits(sample("iperf3-udp.txt")) == pytest.approx(10.2)


def test_proc_net_prism_total_line_by_column():
    c = prism_counters(sample("proc-net-prism.txt"))
    assert c["marked_by_port"] == 200 and c["prio_dropped"] == 1 and c["preemptions"] == 26
    with pytest.raises(ValueError, match="no header or total"):
        prism_counters("cpu0 1 2 3\n")


def test_qemu_version_and_the_minimum_of_eight():
    assert qemu_version(sample("qemu-version.txt"))[0] >= 8
    assert qemu_version(sample("qemu-version-7.txt")) == (7, 2, 15)
    with pytest.raises(qemu.QemuError, match="QEMU 7.2.15, older than 8.*install-deps"):
        qemu.check_version("qemu", sample("qemu-version-7.txt"))
    with pytest.raises(qemu.QemuError, match="no version"):
        qemu.check_version("qemu", "garbage")


def test_a_kernel_message_in_the_middle_of_a_protocol_line_is_taken_out():
    console = "PRISM-CHECK dmes[   34.354714] device vxlan0 left promiscuous mode\r\ng_clean ok \r\n"
    assert protocol_lines(console) == ["PRISM-CHECK dmesg_clean ok "]
    run = kernel.GuestRun(console="PRISM-CHECK a ok\nPRISM-CHECK b fail why\nPRISM-INFO x\n"
                                  "PRISM-TEST-END\n").parse()
    assert run.ended and run.info == ["x"] and run.failures() == {"b": ("fail", "why")}


def test_vcpu_threads_are_found_by_their_names(tmp_path):
    for tid, comm in ((100, "qemu-system-x86"), (101, "CPU 0/TCG"), (102, "CPU 1/TCG"), (103, "worker")):
        (tmp_path / str(tid)).mkdir()
        (tmp_path / str(tid) / "comm").write_text(comm + "\n")
    assert vcpu_threads(tmp_path) == {0: 101, 1: 102}
    assert vcpu_threads(tmp_path / "gone") == {}


def test_prism_vnic_stats_summary_has_a_line_per_port():
    lines = stats_summary(json.loads(sample("prism-vnic-stats.json")))
    assert [ln.split(":")[0] for ln in lines] == ["vm1", "vm2"]
    assert "vhost-user not connected, rx 0 pkts (0 high), tx 0 pkts, drops 0" in lines[0]


def test_exit_status_is_the_numeric_line_among_console_noise():
    assert parse_status("[4]+  Done    foo\n3\n") == 3
    assert parse_status("nothing") is None


def test_testpmd_port_stats_are_read_per_port_and_counter():
    text = sample("testpmd-port-stats.txt")
    assert dpdk.port_counts(text, 0, "RX-packets") == [39072]
    assert dpdk.port_counts(text, 3, "TX-packets") == [256]
    assert dpdk.port_counts(text * 2, 1, "TX-packets") == [512, 512]
    assert dpdk.port_counts(text, 4, "TX-packets") == []


def test_testpmds_failure_is_its_first_error_with_the_cause_it_exited_with():
    assert dpdk.failure_reason(sample("testpmd-bind-failed.txt")) == (
        "VHOST_CONFIG: (/nonexistent/dir/a.sock) failed to bind: No such file or directory; "
        "remove it and try again; Start ports failed")
    assert dpdk.failure_reason(sample("testpmd-no-backend.txt")) == (
        "vhost_user_setup(): connect error, No such file or directory")
    assert dpdk.failure_reason(sample("testpmd-port-stats.txt")) is None


def test_only_the_install_steps_python_counts_as_the_system_interpreter():
    assert is_system_python(str(SYSTEM_PYTHON), "/usr")
    assert not is_system_python(str(SYSTEM_PYTHON), "/opt/venv")
    assert not is_system_python("/root/.pyenv/versions/3.11.7/bin/python3", "/usr")


def test_a_script_started_by_another_python_reruns_under_the_system_one(tmp_path):
    """A venv's python3 (another prefix, no Debian packages) is replaced by /usr/bin/python3
    before the script does anything; the script finds prismtb next to it, as benches/ does
    through its link."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python3").symlink_to(SYSTEM_PYTHON.resolve())
    (venv / "pyvenv.cfg").write_text(f"home = {SYSTEM_PYTHON.parent}\n"
                                     "include-system-site-packages = false\n")
    (tmp_path / "prismtb").symlink_to(REPO / "qemu" / "prismtb")
    script = tmp_path / "probe.py"
    script.write_text("from prismtb.interp import ensure_system_python\nensure_system_python()\n"
                      "import sys\nprint(sys.prefix)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PRISMTB_REEXEC")}
    res = subprocess.run([str(venv / "bin" / "python3"), str(script)], capture_output=True,
                         text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "/usr"


def test_a_socket_another_prism_vnic_listens_on_is_refused_before_starting(tmp_path):
    """prism-vnic itself would take the path over and leave the first daemon deaf."""
    first = Switch(tmp_path / "a", ports=("vm1",), queues=1, sock_dir=tmp_path / "s")
    first.start()
    try:
        second = Switch(tmp_path / "b", ports=("vm1",), queues=1, sock_dir=tmp_path / "s")
        with pytest.raises(SwitchError, match=f"socket {tmp_path}/s/vm1.sock is in use by a running "
                                              r"process \(another prism-vnic\?\): stop it"):
            second.start()
        assert second.proc is None and first.alive()
    finally:
        assert first.stop() == []


def test_a_backend_that_does_not_listen_in_time_is_killed_not_left_running(tmp_path, monkeypatch):
    """Its caller gets an error, not an object to stop: the start must not leave it behind
    (nor when Ctrl-C or SIGTERM interrupts the wait)."""
    monkeypatch.setattr(switch, "SOCKET_TIMEOUT", 0.5)
    sw = Switch(tmp_path, ports=("vm1",), queues=1, sock_dir=tmp_path / "s",
                env={"PRISM_SWITCH_CMD": "sleep 60"})
    with pytest.raises(SwitchError, match=r"sleep did not create \[.*vm1.sock'\] within 0 s"):
        sw.start()
    assert sw.proc is not None and sw.proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "s").exists()


def test_a_metrics_port_already_bound_fails_start_with_the_daemons_one_line(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    addr = "127.0.0.1:%d" % taken.getsockname()[1]
    try:
        sw = Switch(tmp_path / "a", ports=("vm1",), queues=1, sock_dir=tmp_path / "s",
                    extra_args=["--metrics", addr])
        with pytest.raises(SwitchError) as err:
            sw.start()
        first = str(err.value).splitlines()[0]
        assert first == (f"prism-vnic did not start: cannot listen for metrics on {addr}: "
                         f"Address already in use (os error 98) (log {sw.log_path})")
        assert not sw.alive()
    finally:
        taken.close()


def test_qemu_vm_without_a_backend_says_to_start_prism_vnic(tmp_path):
    res = subprocess.run([str(REPO / "qemu" / "vm"), "--socket", str(tmp_path / "none.sock"),
                          "--kernel", "/dev/null", "--initrd", "/dev/null"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr == (f"qemu/vm: error: no vhost-user socket at {tmp_path}/none.sock: start "
                          f"prism-vnic with --port NAME={tmp_path}/none.sock first (or pass "
                          "--reconnect SECONDS)\n")


def test_qemu_vm_on_a_port_that_already_has_a_frontend_says_so(tmp_path):
    """A second QEMU on a port would wait on the socket forever without a word."""
    switch = Switch(tmp_path, ports=("vm1",), queues=1, sock_dir=tmp_path / "s")
    switch.start()
    frontend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        frontend.connect(str(switch.sockets["vm1"]))
        deadline = time.monotonic() + 60
        while not switch.stats()["ports"][0]["connected"]:  # accepted: qemu/vm can see it
            assert time.monotonic() < deadline, "prism-vnic did not accept the connection"
            time.sleep(0.1)
        res = subprocess.run([str(REPO / "qemu" / "vm"), "--socket", str(switch.sockets["vm1"]),
                              "--kernel", "/dev/null", "--initrd", "/dev/null"],
                             capture_output=True, text=True, timeout=60)
    finally:
        frontend.close()
        switch.stop()
    assert res.returncode == 1
    assert res.stderr == (f"qemu/vm: error: port {switch.sockets['vm1']} already has a frontend "
                          "(another QEMU is connected): stop that guest, or give this one another port\n")


def test_qemu_vm_names_qemus_threads_so_vcpus_can_be_pinned(tmp_path):
    """Without debug-threads=on QEMU's vCPU threads are unnamed and pin_vcpus finds none."""
    res = subprocess.run([str(REPO / "qemu" / "vm"), "--socket", str(tmp_path / "s.sock"), "--name", "t19",
                          "--kernel", "/dev/null", "--initrd", "/dev/null", "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "-name t19\\,debug-threads=on " in res.stderr


# --- processes (real, small ones) ----------------------------------------------------------

def test_a_child_that_exits_before_it_is_ready_says_why_in_one_line(tmp_path):
    child = Child(["sh", "-c", "echo starting; echo 'Cause: no ports'; exit 3"], tmp_path / "c.log",
                  reason=lambda text: next((ln.split(": ", 1)[1] for ln in text.splitlines()
                                            if ln.startswith("Cause: ")), None))
    child.start()
    with pytest.raises(ChildError) as err:
        child.wait_until(lambda: False, 60, "listened")
    first, *rest = str(err.value).splitlines()
    assert first == f"sh exited before it listened: no ports (log {tmp_path}/c.log)"
    assert "starting" in rest
    assert child.stop() == 3


def test_a_child_not_ready_in_time_is_named_with_its_exit_status_unknown(tmp_path):
    child = Child(["sleep", "60"], tmp_path / "s.log")
    child.start()
    try:
        with pytest.raises(ChildError, match=r"^sleep did not answer within 0 s \(log "):
            child.wait_until(lambda: False, 0.2, "answer")
    finally:
        assert child.stop() == -signal.SIGINT


def test_a_child_of_a_harness_that_ignores_sigint_still_stops_on_sigint(tmp_path):
    """A harness started in the background of a non-interactive shell (`cmd &`, as CI jobs
    and nohup are) ignores SIGINT, and an ignored signal survives exec: the child's polite
    stop would never reach it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        child = Child(["sleep", "60"], tmp_path / "s.log")
        child.start()
        # Started inside signals_deferred (SIGINT and SIGTERM blocked): the same.
        with signals_deferred():
            deferred = Child(["sleep", "60"], tmp_path / "d.log")
            deferred.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert child.stop(timeout=30) == -signal.SIGINT
    assert deferred.stop(timeout=30) == -signal.SIGINT


def test_a_paused_child_is_stopped_pinned_and_its_log_says_how_it_ended(tmp_path):
    """A SIGSTOPped process would keep a SIGINT pending forever: stop resumes it first. The
    child takes SIGINT's default action: Python's own handler only sets a flag, and one that
    runs just before time.sleep starts is acted on when the sleep ends (seen on a busy CPU)."""
    child = Child([sys.executable, "-c", "import os, signal, sys, time; "
                                         "signal.signal(signal.SIGINT, signal.SIG_DFL); "
                                         "print(sorted(os.sched_getaffinity(0)), flush=True); "
                                         "sys.stdin.readline(); time.sleep(60)"],
                  tmp_path / "p.log", cpus={0})
    child.start()
    child.wait_until(lambda: "[0]" in child.text(), 60, "printed its CPUs")
    child.send("go")
    child.pause()
    assert child.stop(timeout=30) == -signal.SIGINT
    assert not pid_alive(child.pid)
    assert child.text().splitlines()[-1] == "[prismtb] exit status -2"


def test_testpmd_without_its_backend_fails_start_with_the_reason_and_leaves_no_runtime_files(tmp_path):
    """Through the real dpdk-testpmd: a frontend whose backend socket is missing."""
    if not os.path.exists("/usr/bin/dpdk-testpmd"):
        pytest.skip("dpdk-testpmd missing (.ci/install-deps installs dpdk)")
    config = dpdk.Testpmd("fe-unit", [dpdk.VirtioUser(tmp_path / "none.sock")], "io", 0)
    fe = dpdk.TestpmdProcess(config, tmp_path)
    with pytest.raises(dpdk.DpdkError) as err:
        fe.start()
    assert str(err.value).splitlines()[0] == (
        "dpdk-testpmd probed 0 of its 1 ports: vhost_user_setup(): connect error, No such file "
        f"or directory (log {tmp_path}/fe-unit.log)")
    assert not fe.alive() and not dpdk.runtime_dir(fe.prefix).exists()


def test_a_ctrl_c_inside_signals_deferred_waits_for_the_block_whatever_thread_takes_it():
    """The kernel gives a process's signal to any thread that does not block it: with a
    console reader thread running (every booted guest has one), a SIGINT sent while the
    main thread blocked it reached that thread, and Python raised KeyboardInterrupt in the
    main thread inside the block, between a spawn and its record."""
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    where = None
    try:
        try:
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                try:
                    deadline = time.monotonic() + 2.0
                    while time.monotonic() < deadline:  # Python runs: a handler would too
                        sum(range(1000))
                except KeyboardInterrupt:
                    where = "inside the block"
                    raise
        except KeyboardInterrupt:
            where = where or "after the block"
    finally:
        stop.set()
        other.join()
    assert where == "after the block"
