"""The evaluation's parsers on outputs recorded from the real tools on a host (loopback)."""

from pathlib import Path

import pytest

from prismtb.eval import parsers
from prismtb.parsers import parse_sockperf

DATA = Path(__file__).parent / "data"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_sockperf_full_log_gives_every_observation_as_half_round_trips():
    samples = parsers.sockperf_full_log(read("sockperf-full.csv"))
    # The valid-duration count of the same run.
    assert len(samples) == 798
    assert samples[0] == pytest.approx(27.042)
    # The full log rounds each half round trip on its own: within 1 ns of the summary's.
    assert min(samples) == pytest.approx(2.574, abs=0.002)
    assert max(samples) == pytest.approx(28992.386)


def test_sockperf_full_log_and_its_summary_agree_on_the_median():
    summary = parse_sockperf(read("sockperf.txt"))
    metrics = parsers.latency_metrics(parsers.sockperf_full_log(read("sockperf-full.csv")))
    assert metrics["p50_us"] == pytest.approx(summary["p50"], rel=0.05)
    assert metrics["count"] == 798 and summary["dropped"] == 0


def test_iperf3_json_gives_the_received_rate():
    out = parsers.iperf3_json(read("iperf3.json"))
    assert out["mbps"] == pytest.approx(2881.9088, rel=1e-6)
    assert out["streams"] == 2


def test_iperf3_error_is_a_parse_error():
    with pytest.raises(parsers.ParseError, match="unable to connect"):
        parsers.iperf3_json('{"start": {}, "error": "unable to connect to server"}')


def test_wrk_plain_latency_distribution_in_microseconds():
    out = parsers.wrk(read("wrk.txt"))
    assert out["p50_us"] == 50.0
    assert out["p90_us"] == 5530.0
    assert out["p99_us"] == 17310.0
    assert out["requests_per_s"] == pytest.approx(26045.82)


def test_wrk_lua_report_gives_p99_9():
    out = parsers.wrk(read("wrk-lua.txt"))
    assert out["p99.9_us"] == 17986.0
    assert out["p50_us"] == 26.0
    assert out["requests"] == 47827
    assert out["requests_per_s"] == pytest.approx(47827 / 2.033843)


def test_memcaslap_final_statistics_with_log2_percentiles():
    out = parsers.memcaslap(read("memcaslap-c1.txt"))
    get = out["get"]
    assert get["count"] == 46075 and get["mean_us"] == 57.0 and get["geo_us"] == 11.92
    # 4058 of 46075 gets below 16 us, 39607 more in [16, 32): the median is in [16, 32).
    assert 16 <= get["p50_us"] < 32
    # The tail: 1 + 13 + 43 gets at 2^14 us or more, 46 is 0.1%: p99.9 in [2^14, 2^15).
    assert 16384 <= get["p99.9_us"] < 32768
    assert get["p50_us"] <= get["p90_us"] <= get["p99_us"] <= get["p99.9_us"] <= get["max_us"]
    assert out["set"]["count"] == 5120
    assert out["ops_per_s"] == 17064.0


def test_memcaslap_with_periodic_screens_still_reads_the_final_block():
    out = parsers.memcaslap(read("memcaslap.txt"))
    assert out["get"]["count"] == 16686
    assert out["total"]["max_us"] == 19933


def test_outputs_without_results_say_which_tool():
    for fn, text, tool in [(parsers.sockperf_full_log, "nothing", "sockperf"),
                           (parsers.wrk, "Running 3s test", "wrk"),
                           (parsers.memcaslap, "servers: x", "memcaslap")]:
        with pytest.raises(parsers.ParseError, match=tool):
            fn(text)


def test_a_sockperf_turn_without_any_reply_is_recognised():
    assert parsers.sockperf_no_reply(read("sockperf-no-reply.txt"))
    assert not parsers.sockperf_no_reply(read("sockperf.txt"))


def test_a_sockperf_turn_whose_only_reply_came_in_the_warmup_is_one_without_latencies():
    # Recorded in a full run (busy server, no steering, 8 bulk flows, sync): a request was
    # lost, ping-pong waited for its reply until the turn ended, and sockperf wrote no log.
    text = read("sockperf-no-valid-observation.txt")
    assert "ReceivedMessages=1" in text
    assert parsers.sockperf_no_reply(text)
