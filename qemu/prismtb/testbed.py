"""qemu/testbed: bring a topology up (prism-vnic, guests, host namespaces, the container
overlay), look at it, work in it, and take it down leaving nothing behind.

    qemu/testbed up FILE                       build what is missing, start, configure
    qemu/testbed status [-t TESTBED]           hosts, addresses, PRISM modes, prism-vnic counters
    qemu/testbed exec [-t TESTBED] HOST [CONTAINER] -- CMD...
                                               run CMD on HOST (in container cK); its exit status
    qemu/testbed mode [-t TESTBED] HOST 0|1|2  set PRISM's mode on a guest
    qemu/testbed down [-t TESTBED]             stop and remove everything `up` made

TESTBED is a testbed's name or its topology file; without -t, the one testbed that is up.
Several words after `--` are joined as shell words; one word is a shell command line (pipes
and all). What runs is recorded under PRISM_TESTBED_RUN (default /run/prism-testbed); logs
(consoles, QEMU, prism-vnic) go to PRISM_TESTBED_LOGS/NAME (default /var/log/prism-testbed)
and stay after `down`.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from . import image, kernel, qemu
from .guest import Guest, GuestConfig, GuestError
from .knobs import MODES, mode_command, read_mode_command
from .hosttools import missing
from .netns import HostNetns, NetnsError, create_tap
from .overlay import OverlayParams, container_ip, overlay_steps
from .parsers import stats_summary
from .procs import signals_deferred
from .state import State, StateError, run_root, same_process
from .switch import Switch, SwitchError
from .topology import HostSpec, Topology, TopologyError, load

BOOT_TIMEOUT = float(os.environ.get("PRISM_TESTBED_BOOT_TIMEOUT", "900"))
REACH_TIMEOUT = 300.0
EXEC_TIMEOUT = float(os.environ.get("PRISM_TESTBED_EXEC_TIMEOUT", "3600"))


class UpError(Exception):
    """`up` could not finish; the message says which step and what to do."""


def logs_root() -> Path:
    return Path(os.environ.get("PRISM_TESTBED_LOGS", "/var/log/prism-testbed"))


def say(text: str) -> None:
    print(f"testbed: {text}", flush=True)


def timed(what: str, step: Callable, detail: str = ""):
    """Runs step() between a line saying what it does and one saying how long it took."""
    say(f"{what}{detail} ...")
    begun = time.monotonic()
    result = step()
    say(f"{what}: done in {time.monotonic() - begun:.0f} s")
    return result


# --- up ------------------------------------------------------------------------------------------

class Up:
    def __init__(self, topo: Topology, state: State):
        self.topo = topo
        self.state = state
        self.logs = logs_root() / topo.name
        self.guests: dict[str, Guest] = {}
        self.netns: dict[str, HostNetns] = {}
        self.switch: Switch | None = None

    def run(self) -> None:
        topo, state = self.topo, self.state
        guest_hosts = [h for h in topo.hosts if h.is_guest]
        if guest_hosts:
            qemu.find_qemu()
            why = qemu.kvm_problem()
            if why:
                say(f"{why}: guests run under TCG (slower, but everything works)")
        shutil.rmtree(self.logs, ignore_errors=True)
        self.logs.mkdir(parents=True)
        state.create(str(topo.path), self.logs)
        say(f"bringing {topo.name} up from {topo.path} (logs in {self.logs})")

        kernels: dict[tuple, Path] = {}
        for spec, source in sorted({(h.kernel, h.kernel_source) for h in guest_hosts}, key=str):
            what = f"kernel {spec}" + (f" from {source}" if source else "")
            kernels[(spec, source)] = timed(what, lambda spec=spec, source=source: kernel.resolve_kernel(
                spec, source=source))
        images: dict[Path, Path] = {}
        for path in sorted(set(kernels.values())):
            images[path] = timed(f"guest image for {path}", lambda path=path: image.workload_image(path, progress=True))

        sock_dir = Path(tempfile.mkdtemp(prefix=f"prism-tb-{topo.name}-"))
        state.add("dir", path=str(sock_dir))
        taps: dict[str, str] = {}
        for h in topo.hosts:
            if not h.is_guest:
                tap = topo.tap_name(h)
                state.add("tap", name=tap, netns=topo.netns_name(h))
                create_tap(tap)
                taps[h.port] = tap
        self.switch = Switch(self.logs, ports=tuple(h.port for h in guest_hosts), queues=topo.queues,
                             taps=taps, extra_args=topo.switch.argv(), sock_dir=sock_dir,
                             detached=True)
        timed("prism-vnic", lambda: self.switch.start(on_spawn=lambda pid: state.add_process("prism-vnic", pid)),
              f" ({' '.join(self.switch.argv[1:])})")
        state.data["switch"] = {"binary": str(self.switch.binary), "control": str(self.switch.control),
                                "log": str(self.switch.log_path)}
        state.save()

        for h in topo.hosts:
            if not h.is_guest:
                ns = HostNetns(topo.netns_name(h), topo.tap_name(h), h.address)
                state.add("netns", name=ns.name, tap=ns.tap)
                ns.create()
                self.netns[h.name] = ns
                self.record_host(h, netns=ns.name, tap=ns.tap)

        for h in guest_hosts:
            cfg = GuestConfig(name=h.name, socket=self.switch.sockets[h.port], ip=h.address,
                              queues=h.queues, smp=h.vcpus, mem=h.memory,
                              kernel=str(kernels[(h.kernel, h.kernel_source)]),
                              initrd=str(images[kernels[(h.kernel, h.kernel_source)]]))
            guest = Guest(cfg, self.logs)
            console = sock_dir / f"{h.name}.console"
            say(f"booting {h.name}: kernel {h.kernel}, {h.vcpus} vCPUs, {h.memory}, {h.queues} queue pairs")
            guest.start_detached(console, on_spawn=lambda pid, h=h: state.add_process(
                f"QEMU {h.name}", pid, signal="KILL"))
            self.guests[h.name] = guest
            self.record_host(h, console=str(console), console_log=str(guest.console_log_path),
                             qemu_log=str(guest.qemu_log_path))
        begun = time.monotonic()
        for name, guest in self.guests.items():
            guest.wait_ready(timeout=BOOT_TIMEOUT, progress=lambda t, name=name: say(
                f"waiting for {name} to boot: {time.monotonic() - begun:.0f} s"))
        if self.guests:
            say(f"guests ready in {time.monotonic() - begun:.0f} s ({self.accelerator()})")
        for h in guest_hosts:
            if h.pin:
                placed = self.guests[h.name].pin_vcpus(h.pin)
                say(f"{h.name}: vCPU threads pinned to host CPUs {placed}")

        self.build_overlay(guest_hosts)
        self.wait_reachable()
        state.data["up"] = True
        state.data["ready"] = time.strftime("%Y-%m-%d %H:%M:%S")
        state.save()
        for guest in self.guests.values():
            guest.detach()

    def record_host(self, h: HostSpec, **fields) -> None:
        entry = self.state.data["hosts"].setdefault(h.name, {
            "kind": h.kind, "port": h.port, "address": h.address, "containers": []})
        entry.update(fields)
        self.state.save()

    def accelerator(self) -> str:
        """qemu/vm's line about the accelerator it chose, from the first guest's log."""
        guest = next(iter(self.guests.values()))
        try:
            for line in guest.qemu_log_path.read_text(errors="replace").splitlines():
                if "accelerator" in line or "KVM unusable" in line:
                    return line.removeprefix("qemu/vm: ")
        except OSError:
            pass
        return "accelerator unknown"

    def build_overlay(self, guest_hosts: list[HostSpec]) -> None:
        ov = self.topo.overlay
        members = [(n, h) for n, h in enumerate(self.topo.hosts, start=1) if h.is_guest and h.containers]
        if ov is None or not members:
            return
        for n, h in members:
            params = OverlayParams(containers=h.containers, vni=ov.vni, dstport=ov.dstport,
                                   subnet=ov.subnet, mtu=ov.mtu)
            assert h.address is not None  # topology checks it
            local = h.address.split("/")[0]
            peers = [o.address.split("/")[0] for _, o in members if o is not h and o.address]
            say(f"{h.name}: overlay (VXLAN {ov.vni} to {', '.join(peers) or 'no peer'}, "
                f"{h.containers} container(s))")
            guest = self.guests[h.name]
            for step in overlay_steps(params, n, local, peers):
                guest.check(step)
            self.record_host(h, number=n, containers=[container_ip(params, n, k)
                                                      for k in range(1, h.containers + 1)])

    def wait_reachable(self) -> None:
        """Every container reaches the first container of every other guest, and every host
        namespace reaches every guest: ARP and the bridges' learning done, the paths proven."""
        hosts = self.state.data["hosts"]
        members = [(name, e) for name, e in hosts.items() if e["kind"] == "guest" and e["containers"]]
        for name, e in members:
            for other, oe in members:
                if other == name:
                    continue
                for k in range(1, len(e["containers"]) + 1):
                    say(f"{name} c{k} -> {other} c1 ({oe['containers'][0]})")
                    self.guests[name].wait_until(
                        f"ip netns exec c{k} ping -c 1 -W 2 {oe['containers'][0]} >/dev/null",
                        REACH_TIMEOUT, interval=0)
        for name, ns in self.netns.items():
            for other, oe in hosts.items():
                if oe["kind"] == "guest" and oe.get("address") and ns.address:
                    target = oe["address"].split("/")[0]
                    say(f"{name} -> {other} ({target})")
                    ns.wait_until(f"ping -c 1 -W 2 {target} >/dev/null", REACH_TIMEOUT, interval=0)


def cmd_up(args) -> int:
    try:
        topo = load(Path(args.topology))
    except TopologyError as e:
        print(f"testbed: {e}", file=sys.stderr)
        return 2
    if any(h.kind == "netns" for h in topo.hosts):
        # A host namespace is made with ip and proven reachable with ping, on the host.
        lacking = missing(["ip", "ping"])
        if lacking:
            print(f"testbed: {args.topology}: its host namespaces need, on the host, "
                  f"{', '.join(lacking)}: run .ci/install-deps", file=sys.stderr)
            return 2
    state = State(topo.name)
    try:
        state.lock()
    except StateError as e:
        print(f"testbed: {e}", file=sys.stderr)
        return 1
    try:
        if state.exists():
            state.load()
            live = state.live_processes()
            if live:
                pids = ", ".join(f"{r['what']} {r['pid']}" for r in live)
                print(f"testbed: {topo.name} is already up (since {state.data.get('started')}; {pids}): "
                      f"`qemu/testbed down -t {topo.name}` first", file=sys.stderr)
                return 1
            say(f"removing what an earlier {topo.name} left behind")
            with signals_deferred():
                state.teardown(say)
        up = Up(topo, state)
        try:
            up.run()
        except BaseException as e:  # Ctrl-C and failures alike: leave nothing behind
            interrupted = isinstance(e, KeyboardInterrupt)
            if interrupted:
                print("testbed: interrupted: taking down what was started", file=sys.stderr, flush=True)
            else:
                print(f"testbed: up failed: {describe(e)}", file=sys.stderr, flush=True)
                say("taking down what was started")
            with signals_deferred():
                for guest in up.guests.values():
                    guest.detach()
                left = state.teardown(say)
            if left:
                print(f"testbed: could not remove: {'; '.join(left)}", file=sys.stderr)
            if not isinstance(e, Exception) and not interrupted:
                raise
            return 130 if interrupted else 1
        say(f"{topo.name} is up")
        print_status(state)
        return 0
    finally:
        state.unlock(remove=not state.exists())


def describe(e: BaseException) -> str:
    """One paragraph for the known failures (their messages say what to do), else the repr."""
    known = (qemu.QemuError, kernel.KernelError, image.ImageError, SwitchError, GuestError,
             NetnsError, StateError, UpError)
    return str(e) if isinstance(e, known) else f"{type(e).__name__}: {e}"


# --- finding a running testbed -----------------------------------------------------------------

def find_state(spec: str | None) -> State:
    """The testbed named by spec (a name or a topology file), or the only one up."""
    if spec is not None:
        name = spec
        if spec.endswith(".toml") or os.path.sep in spec:
            try:
                name = load(Path(spec)).name
            except TopologyError as e:
                raise StateError(str(e)) from e
        state = State(name)
        state.load()
        return state
    root = run_root()
    names = sorted(p.name for p in root.iterdir() if (p / "state.json").exists()) if root.is_dir() else []
    if not names:
        raise StateError("no testbed is up (qemu/testbed up FILE)")
    if len(names) > 1:
        raise StateError(f"several testbeds are up ({', '.join(names)}): say which with -t NAME")
    state = State(names[0])
    state.load()
    return state


def host_entry(state: State, host: str) -> dict:
    hosts = state.data.get("hosts", {})
    if host not in hosts:
        raise StateError(f"testbed {state.name} has no host {host!r} (hosts: {', '.join(hosts) or 'none'})")
    return hosts[host]


class Console:
    """A running guest's console, one user at a time (a lock file per guest)."""

    def __init__(self, state: State, host: str):
        entry = host_entry(state, host)
        if entry["kind"] != "guest":
            raise StateError(f"{host} is a host namespace, not a guest")
        pid = next((r for r in state.processes() if r["what"] == f"QEMU {host}"), None)
        if pid is None or not same_process(pid):
            raise StateError(f"{host}'s QEMU is not running (see {entry.get('console_log')})")
        self.lock_fd = os.open(state.dir / f"{host}.console.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        console = Path(entry["console"])
        self.guest = Guest(GuestConfig(name=host, socket=Path("/dev/null")), Path(state.data["logs"]))
        self.guest.attach(console, pid["pid"])

    def close(self) -> None:
        self.guest.detach()
        os.close(self.lock_fd)


# --- status, exec, mode, down -----------------------------------------------------------------

def print_status(state: State) -> None:
    d = state.data
    print(f"testbed {state.name}: {'up' if d.get('up') else 'coming up'} since {d.get('started')}, "
          f"topology {d.get('topology')}, logs {d.get('logs')}")
    for name, e in d.get("hosts", {}).items():
        where = f"netns {e.get('netns')}, tap {e.get('tap')}" if e["kind"] == "netns" else "guest"
        line = f"  {name}: {where} on port {e['port']}, eth0 {e.get('address') or '-'}"
        if e.get("containers"):
            line += ", containers " + ", ".join(f"c{k}={ip}" for k, ip in enumerate(e["containers"], 1))
        if e["kind"] == "guest" and d.get("up"):
            try:
                console = Console(state, name)
                try:
                    rc, out = console.guest.run(read_mode_command(), timeout=60)
                finally:
                    console.close()
                mode = out.strip().splitlines()[-1] if out.strip() else "?"
                if mode.isdigit() and int(mode) in MODES:
                    line += f", PRISM mode {mode} ({MODES[int(mode)]})"
                else:
                    line += ", no PRISM (kernel without the series)"
            except (StateError, GuestError) as err:
                line += f", console unavailable ({str(err).splitlines()[0]})"
        print(line)
    sw = d.get("switch")
    if sw:
        try:
            res = subprocess.run([sw["binary"], "stats", "--control", sw["control"], "--json"],
                                 capture_output=True, text=True, timeout=30)
            for line in stats_summary(json.loads(res.stdout)):
                print(f"  prism-vnic {line}")
        except (OSError, ValueError, subprocess.TimeoutExpired) as err:
            print(f"  prism-vnic: no counters ({err}); log {sw.get('log')}")
    dead = [r for r in state.processes() if not same_process(r)]
    for r in dead:
        print(f"  NOT RUNNING: {r['what']} (was pid {r['pid']})")


def cmd_status(args) -> int:
    state = find_state(args.testbed)
    print_status(state)
    return 0


def command_line(words: list[str]) -> str:
    """One word is a shell command line; several are joined as shell words."""
    return words[0] if len(words) == 1 else shlex.join(words)


def cmd_exec(args) -> int:
    state = find_state(args.testbed)
    entry = host_entry(state, args.host)
    cmd = command_line(args.command)
    container = args.container
    if container is not None:
        k = container.removeprefix("c")
        if not k.isdigit() or not 1 <= int(k) <= len(entry.get("containers", [])):
            raise StateError(f"{args.host} has no container {container!r} "
                             f"(it has c1..c{len(entry.get('containers', []))})")
        cmd = f"ip netns exec c{k} bash -c {shlex.quote(cmd)}"
    if entry["kind"] == "netns":
        if container is not None:
            raise StateError(f"{args.host} is a host namespace: it has no containers")
        return subprocess.run(["ip", "netns", "exec", entry["netns"], "sh", "-c", cmd]).returncode
    console = Console(state, args.host)
    try:
        # In a child shell: `exit` or `cd` in CMD must not touch the console's shell.
        rc, out = console.guest.run(f"bash -c {shlex.quote(cmd)}", timeout=args.timeout)
    finally:
        console.close()
    if out:
        print(out)
    return rc


def cmd_mode(args) -> int:
    state = find_state(args.testbed)
    console = Console(state, args.host)
    try:
        rc, out = console.guest.run(mode_command(args.mode), timeout=120)
    finally:
        console.close()
    if rc != 0:
        print(f"testbed: {args.host}: setting prism_mode failed (a vanilla kernel has no PRISM): "
              f"{out.strip()}", file=sys.stderr)
        return 1
    say(f"{args.host}: PRISM mode {args.mode} ({MODES[args.mode]})")
    return 0


def cmd_down(args) -> int:
    try:
        state = find_state(args.testbed)
    except StateError as e:
        say(f"nothing to take down: {e}")
        return 0
    state.lock()
    try:
        with signals_deferred():
            left = state.teardown(say)
    finally:
        state.unlock(remove=True)
    if left:
        print(f"testbed: could not remove: {'; '.join(left)}", file=sys.stderr)
        return 1
    say(f"{state.name} is down; logs stay in {state.data.get('logs')}")
    return 0


# --- command line ------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qemu/testbed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("up", help="bring a topology up")
    p.add_argument("topology", help="topology file (TOML; examples in qemu/topologies/)")
    for verb in ("status", "down"):
        p = sub.add_parser(verb)
        p.add_argument("-t", "--testbed", help="name or topology file (default: the one that is up)")
    p = sub.add_parser("exec", help="run a command on a host, or in one of its containers")
    p.add_argument("-t", "--testbed")
    p.add_argument("--timeout", type=float, default=EXEC_TIMEOUT)
    p.add_argument("host")
    p.add_argument("container", nargs="?", help="c1, c2, ... (or 1, 2, ...)")
    p = sub.add_parser("mode", help="set PRISM's mode on a guest")
    p.add_argument("-t", "--testbed")
    p.add_argument("host")
    p.add_argument("mode", type=int, choices=sorted(MODES))
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    args = parser().parse_args(argv)
    if args.verb == "exec":
        if not command:
            parser().error("exec needs a command after --")
        args.command = command
    elif command:
        parser().error(f"{args.verb} takes no command after --")
    # SIGTERM is a Ctrl-C: `up` takes down what it started either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    verbs = {"up": cmd_up, "status": cmd_status, "exec": cmd_exec, "mode": cmd_mode, "down": cmd_down}
    try:
        return verbs[args.verb](args)
    except (StateError, GuestError, NetnsError, SwitchError) as e:
        print(f"testbed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
