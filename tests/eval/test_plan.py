"""The runner's plan, without QEMU: cells, round orders, boots, the time estimate."""

import subprocess
import sys

import pytest

from prismtb import REPO
from prismtb.eval import runner


def test_rounds_alternate_the_order_of_modes():
    assert runner.round_order(0) == ["mode0", "batch", "sync"]
    assert runner.round_order(1) == ["sync", "batch", "mode0"]


def test_vanilla_boots_alternate_with_prism_boots_and_share_the_rounds():
    full = runner.PROFILES["full"]
    plan = runner.boot_plan(full)
    assert [k for k, _ in plan] == ["prism", "vanilla", "prism", "vanilla"]
    assert plan[0][1] == plan[1][1] == list(range(5))
    assert plan[2][1] == plan[3][1] == list(range(5, 10))


def test_the_full_profile_has_every_experiment_factor():
    full = runner.PROFILES["full"]
    cells = runner.cells(full, "host-client")
    assert {c.experiment for c in cells} == {"a", "b", "c", "d"}
    assert {c.server for c in cells} == {"idle", "busy"}
    assert {c.steering for c in cells} == {True, False}
    assert sorted({c.flows for c in cells if c.experiment == "b"}) == [0, 1, 2, 4, 8]
    assert {c.path for c in cells if c.experiment == "a"} == {"overlay", "host"}
    # 2 servers x 2 steering x (2 a + 5 b + c + d)
    assert len(cells) == 36


def test_the_quick_profile_fits_ci_budget_of_10_minutes():
    assert runner.estimate_minutes(runner.PROFILES["quick"]) <= 10


def test_dry_run_prints_the_plan():
    proc = subprocess.run([sys.executable, str(REPO / "benches" / "eval"), "--full",
                           "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "host-client: 36 cells" in proc.stdout and "two-guests" in proc.stdout


def test_unknown_experiment_is_refused():
    proc = subprocess.run([sys.executable, str(REPO / "benches" / "eval"), "--experiments",
                           "a,z", "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown experiments ['z']" in proc.stderr


def test_a_cells_turns_share_one_set_of_bulk_flows_and_take_the_rounds_order():
    quick = runner.PROFILES["quick"]
    groups = list(runner.round_groups("prism", True, quick, 1, "host-client"))
    b = [steps for cell, steps in groups if cell.experiment == "b"]
    assert b == [[runner.Step("sync"), runner.Step("batch"), runner.Step("mode0")]]
    cal = [steps for cell, steps in groups if cell.experiment == "cal"]
    assert cal == [[runner.Step("mode0", 1000), runner.Step("mode0", 0)]]


def test_a_vanilla_boot_measures_each_cell_once_and_no_calibration():
    quick = runner.PROFILES["quick"]
    groups = list(runner.round_groups("vanilla", False, quick, 0, "host-client"))
    assert [(c.experiment, s) for c, s in groups] == [("b", [runner.Step("vanilla")])]


def test_the_bulk_flows_outlast_every_turn_of_their_cell():
    steps, seconds = 3, 4.0
    assert runner.bulk_seconds(steps, seconds) > (runner.BULK_WARMUP_S + steps * (
        seconds + runner.SETTLE_S + runner.STEP_OVERHEAD_S))


def test_a_reading_of_the_guest_gives_its_clock_ksoftirqd_time_and_bytes():
    stat = ("12 (ksoftirqd/0) S 2 0 0 0 -1 69238848 0 0 0 0 "
            "150 275 0 0 20 0 1 0 3 0 0 18446744073709551615")
    reading = runner._rx_reading(["35.61 20.02", stat, "123456789"])
    assert reading == runner.RxReading(35.61, 425, 123456789)


STAT = ("12 (ksoftirqd/0) S 2 0 0 0 -1 69238848 0 0 0 0 "
        "150 275 0 0 20 0 1 0 3 0 0 18446744073709551615")
# CONTAINER_RX's lines as a PRISM guest prints them: clock, ksoftirqd's stat, the container's
# bytes, then ksoftirqd's voluntary switches, softnet_stat (hex), /proc/stat's cpu line, the
# NET_RX softirqs and /proc/net/prism's header and total on one line.
PRISM_READING = [
    "35.61 20.02", STAT, "123456789", "voluntary_ctxt_switches:\t4242",
    "0000ab12 00000000 00000011 00000000 00000000 00000000 00000000 00000000 00000000 "
    "00000000 00000000 00000000 00000000",
    "cpu  100 0 200 300 0 5 77 0 0 0", "      NET_RX:       9876",
    "cpu marked_by_queue marked_by_port marked_on_tx prio_enqueued prio_dropped preemptions "
    "yields sync_deliveries sync_fallbacks empty_runs napi_ahead switch_forced prio_waits "
    "prio_waited prio_unmatched total 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 ",
]


def test_a_reading_also_gives_the_receive_paths_counters():
    reading = runner._rx_reading(PRISM_READING)
    assert (reading.uptime, reading.ksoftirqd_ticks, reading.rx_bytes) == (35.61, 425, 123456789)
    assert reading.counters == {
        "ksoftirqd_wakeups": 4242, "softnet_processed": 0xab12, "time_squeeze": 0x11,
        "cpu_idle_ticks": 300, "cpu_softirq_ticks": 77, "net_rx_softirqs": 9876,
        "prism_preemptions": 6, "prism_yields": 7, "prism_empty_runs": 10,
        "prism_napi_ahead": 11, "prism_prio_waits": 13, "prism_prio_waited": 14,
        "prism_prio_unmatched": 15}
    # A kernel without PRISM prints an empty last line: no prism_* counters.
    vanilla = runner._rx_reading(PRISM_READING[:-1] + [""])
    assert not any(k.startswith("prism_") for k in vanilla.counters)
    assert vanilla.counters["time_squeeze"] == 0x11


def test_readings_come_whole_from_a_guests_output_with_or_without_prism():
    """Two readings in one trip over the console (switch_mode) parse alike whether the kernel
    has /proc/net/prism or not: its line carries a marker, so the output never ends with an
    empty line that stripping would drop (a vanilla boot of `benches/eval --quick` failed so,
    the second reading read one line off)."""
    empty = subprocess.run(["sh", "-c", runner.PRISM_LINE.replace("/proc/net/prism",
                                                                  "/nonexistent/prism")],
                           capture_output=True, text=True, check=True).stdout
    assert empty.strip() == "prism"
    prism_line = "prism " + PRISM_READING[-1]
    for last in (empty.rstrip("\n"), prism_line):
        reading = PRISM_READING[:-1] + [last]
        out = "$ cmd\n" + "\n".join(reading + reading) + "\n"
        before, after = runner.rx_readings(out, 2)
        assert before == after
        assert (after.uptime, after.ksoftirqd_ticks, after.rx_bytes) == (35.61, 425, 123456789)
        assert ("prism_yields" in after.counters) == (last == prism_line)
    with pytest.raises(runner.EvalError):
        runner.rx_readings("35.61 20.02\n", 1)


def test_a_turn_records_the_counters_increase_and_the_cpus_shares():
    start = runner._rx_reading(PRISM_READING)
    end = runner.RxReading(start.uptime + 2.0, start.ksoftirqd_ticks + 50, start.rx_bytes,
                           {**start.counters, "time_squeeze": start.counters["time_squeeze"] + 3,
                            "cpu_softirq_ticks": start.counters["cpu_softirq_ticks"] + 80,
                            "prism_empty_runs": 12})
    metrics = runner.turn_counters(start, end)
    assert metrics["time_squeeze"] == 3 and metrics["prism_empty_runs"] == 2
    assert metrics["ksoftirqd_cpu"] == 0.25 and metrics["softirq_cpu"] == 0.4
    assert metrics["idle_cpu"] == 0.0
    # No marked packet reached a socket: no wait metric rather than a division by zero.
    assert runner.results.WAIT_METRIC not in metrics


def test_a_turn_with_the_kernels_wait_counters_gives_the_mean_wait_of_a_priority_packet():
    start = runner._rx_reading(PRISM_READING)
    end = runner.RxReading(start.uptime + 2.0, start.ksoftirqd_ticks, start.rx_bytes,
                           {**start.counters, "prism_prio_waits": 13 + 50,
                            "prism_prio_waited": 14 + 50 * 37, "prism_prio_unmatched": 15})
    metrics = runner.turn_counters(start, end)
    assert metrics[runner.results.WAIT_METRIC] == 1 + 37.0
    assert metrics["prism_prio_unmatched"] == 0


def test_no_priority_flow_measures_the_bulk_flows_alone():
    class Bed:
        priority_mps, client = 0, None  # a client call would fail
    cell = runner.results.Cell("host-client", "b", "busy", True, 2, "overlay")
    metrics, raw, samples = runner._probe(Bed(), cell, 0, "t", None)
    assert (metrics, raw, samples) == ({}, {}, [])


def test_knobs_and_the_priority_rate_show_in_the_plan_and_bad_knobs_are_refused():
    eval_cmd = [sys.executable, str(REPO / "benches" / "eval"), "--experiments", "b",
                "--dry-run"]
    proc = subprocess.run(eval_cmd + ["--knob", "prism_napi_ahead=0", "--priority-mps", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "priority flow at 0 msg/s" in proc.stdout
    assert "knobs prism_napi_ahead=0" in proc.stdout
    for bad in ("dev_weight=8", "prism_mode=1; reboot", "prism_napi_ahead"):
        proc = subprocess.run(eval_cmd + ["--knob", bad], capture_output=True, text=True)
        assert proc.returncode == 2 and "not a PRISM knob setting" in proc.stderr, bad


def test_the_two_guests_setup_covers_the_goals_cells_beside_host_client():
    full = runner.PROFILES["full"]
    cells = runner.cells(full, "two-guests")
    assert {(c.server, c.steering) for c in cells} == {("busy", True)}
    assert {c.experiment for c in cells} == {"a", "b", "c", "d"} and len(cells) == 9


def test_paced_bulk_flows_run_iperf3_at_the_rate_given_for_each_flow():
    assert " -P 2 -b 20M -t 60 " in runner.bulk_command(5301, 2, 60, "20M")
    assert " -b " not in runner.bulk_command(5301, 2, 60, None)


def test_a_bulk_rate_shows_in_the_plan_and_a_malformed_one_is_refused():
    eval_cmd = [sys.executable, str(REPO / "benches" / "eval"), "--experiments", "b",
                "--dry-run"]
    proc = subprocess.run(eval_cmd + ["--bulk-rate", "20M"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "at 20Mbit/s each" in proc.stdout
    proc = subprocess.run(eval_cmd + ["--bulk-rate", "fast"], capture_output=True, text=True)
    assert proc.returncode == 2 and "not a rate like 20M" in proc.stderr


def test_the_report_says_whether_other_sessions_could_take_half_a_cpu():
    from prismtb.eval import report
    meta = {"machine": {"cpus": 2, "loadavg_start": "0.1", "loadavg_end": "0.2",
                        "sched_autogroup": "1"}}
    text = report.render(meta, {"cells": []}, [], REPO)
    assert "sched_autogroup 1" in text
    assert runner._sched_autogroup() in ("0", "1", "unknown")
