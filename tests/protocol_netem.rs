//! Impairments (`--netem`, `prism-vnic netem`) through the real binary: guest a sends to
//! guest b, whose port is impaired, and what b's driver receives is checked frame by frame
//! against what a sent. Every count is held to a bound computed from its distribution, 5 or
//! more standard deviations wide; with a seed, the outcome is the same on every run anyway.

mod support;

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::{BINARY, Daemon};
use support::frames::{dscp_frame, udp_tag};
use support::guest::{GuestOptions, RxFrame, TestGuest};
use support::scrape::{http_get, metrics_addr, sample};

const EF: u8 = 46;
/// Frames for the statistical checks (the issue's figure).
const FRAMES: u32 = 20_000;
/// RX buffers b keeps posted.
const POSTED: usize = 256;

struct Pair {
    daemon: Daemon,
    a: TestGuest,
    b: TestGuest,
}

/// Ports a and b with one queue pair each; the NIC may buffer a whole test's frames while
/// b's ring is full, so nothing is dropped but by netem.
fn pair(extra: &[&str]) -> Pair {
    let mut builder = Daemon::builder()
        .port("a")
        .port("b")
        .arg("--rx-buffer")
        .arg("100000");
    for arg in extra {
        builder = builder.arg(arg);
    }
    let daemon = builder.spawn().expect("daemon starts");
    let a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let mut b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    b.post_rx_buffers(0, POSTED, 2048).expect("post");
    Pair { daemon, a, b }
}

/// Frames of the normal class (DSCP 0), or EF, tagged `first..first + n`.
fn frames(first: u32, n: u32, dscp: u8) -> Vec<Vec<u8>> {
    (first..first + n)
        .map(|tag| dscp_frame(4000, 5000, dscp, tag))
        .collect()
}

/// Port b's netem object from the stats.
fn netem_of(stats: &Value) -> Value {
    stats["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == "b"))
        .map(|port| port["netem"].clone())
        .expect("port b in the stats")
}

fn counter(netem: &Value, class: &str, name: &str) -> u64 {
    netem[class]["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("{class} {name} in {netem}"))
}

/// A counter summed over both classes.
fn total(netem: &Value, name: &str) -> u64 {
    counter(netem, "high", name) + counter(netem, "normal", name)
}

/// The counters that change how many frames arrive: duplicates, less losses and budget drops.
fn arrival_balance(netem: &Value) -> i64 {
    total(netem, "netem_duplicated") as i64
        - total(netem, "netem_lost") as i64
        - total(netem, "netem_drops_budget") as i64
}

/// Sends `frames` from a to b, then receives at b until every frame is accounted for:
/// b has received each frame sent, less the losses and budget drops, plus the duplicates.
fn exchange(pair: &mut Pair, frames: &[Vec<u8>]) -> Vec<RxFrame> {
    let before = arrival_balance(&netem_of(&pair.daemon.stats().expect("stats")));
    for chunk in frames.chunks(128) {
        pair.a.send_batch(0, chunk).expect("send");
    }
    let sent = frames.len() as i64;
    let mut got: Vec<RxFrame> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let arrived = pair
            .b
            .recv_any(1, Duration::from_millis(100))
            .expect("recv");
        if !arrived.is_empty() {
            pair.b
                .post_rx_buffers(0, arrived.len(), 2048)
                .expect("post");
            got.extend(arrived);
            continue;
        }
        let netem = netem_of(&pair.daemon.stats().expect("stats"));
        let expected = sent + arrival_balance(&netem) - before;
        if got.len() as i64 == expected {
            // Equal only once every frame was decided on and delivered (or lost).
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} frames received of {expected} expected; netem {netem}",
            got.len()
        );
    }
}

fn run(daemon: &Daemon, args: &[&str]) -> Output {
    Command::new(BINARY)
        .arg(args[0])
        .arg("--control")
        .arg(daemon.control_socket())
        .args(&args[1..])
        .output()
        .expect("run prism-vnic")
}

/// `prism-vnic netem b ...`, which must succeed; its answer.
fn set_netem(daemon: &Daemon, words: &str) -> Value {
    let mut args = vec!["netem", "b"];
    args.extend(words.split_whitespace());
    let output = run(daemon, &args);
    assert!(
        output.status.success(),
        "netem b {words}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON answer")
}

/// Asserts `count` of `n` is within 5 standard deviations of a binomial with chance `p`.
fn assert_binomial(what: &str, count: u64, n: u64, p: f64) {
    let mean = n as f64 * p;
    let bound = 5.0 * (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (count as f64 - mean).abs() <= bound,
        "{what}: {count} of {n}, expected {mean} +- {bound}"
    );
}

fn tags(frames: &[RxFrame]) -> Vec<u32> {
    frames
        .iter()
        .map(|f| udp_tag(&f.frame).expect("tagged"))
        .collect()
}

#[test]
fn loss_of_1_percent_set_at_start_drops_a_binomial_share_and_counts_it_everywhere() {
    let mut pair = pair(&["--netem", "b=loss 1% seed 7", "--metrics", "127.0.0.1:0"]);
    let sent = frames(0, FRAMES, 0);
    let got = exchange(&mut pair, &sent);
    let got_tags = tags(&got);
    // What arrives is what was sent, in order, less the lost frames.
    assert!(got_tags.windows(2).all(|w| w[0] < w[1]), "in order, once");
    let stats = pair.daemon.stats().expect("stats");
    let netem = netem_of(&stats);
    let lost = counter(&netem, "normal", "netem_lost");
    assert_eq!(FRAMES as u64 - got.len() as u64, lost);
    assert_binomial("loss 1%", lost, FRAMES as u64, 0.01);
    // Given for every class: both classes have it (each its own random stream).
    assert_eq!(netem["normal"]["settings"], "loss random 1% seed 7");
    assert_eq!(netem["high"]["settings"], "loss random 1% seed 7");
    // The Prometheus scrape shows the same counter, per port and class.
    let addr = metrics_addr(&mut pair.daemon).expect("metrics address");
    let text = http_get(addr, "/metrics", None).expect("scrape").body;
    let labels = r#"port="b",class="normal""#;
    assert_eq!(
        sample(&text, "prism_vnic_netem_lost_total", labels),
        Some(lost as f64),
        "{text}"
    );
    let labels = r#"port="b",class="high""#;
    assert_eq!(
        sample(&text, "prism_vnic_netem_lost_total", labels),
        Some(0.0)
    );
}

#[test]
fn gilbert_elliott_loss_and_reordering_through_the_daemon_match_their_expected_rates() {
    let mut pair = pair(&[
        "--netem",
        "b=delay 100ms loss gemodel 1% 10% reorder 10% gap 3 seed 21",
    ]);
    let got = exchange(&mut pair, &frames(0, FRAMES, 0));
    let netem = netem_of(&pair.daemon.stats().expect("stats"));
    let lost = counter(&netem, "normal", "netem_lost");
    assert_eq!(FRAMES as u64 - got.len() as u64, lost);
    // The loss is the chain's bad state (1-h 100%, 1-k 0%): stationary share p / (p + r),
    // its count's variance a binomial's times (1 + l) / (1 - l), l = 1 - p - r.
    let (p, r) = (0.01, 0.1);
    let rate = p / (p + r);
    let lambda = 1.0 - p - r;
    let n = FRAMES as f64;
    let bound = 5.0 * (n * rate * (1.0 - rate) * (1.0 + lambda) / (1.0 - lambda)).sqrt();
    assert!(
        (lost as f64 - n * rate).abs() <= bound,
        "gemodel: {lost} lost, expected {} +- {bound}",
        n * rate
    );
    // Of the frames that go on, after every 2 delayed ones each goes at once with 10%: one
    // in 2 + 1/0.1 = 12, a renewal count of variance n Var(G) / E[cycle]^3.
    let survivors = got.len() as f64;
    let (q, cycle) = (0.1, 12.0);
    let reordered = counter(&netem, "normal", "netem_reordered") as f64;
    let bound = 5.0 * (survivors * ((1.0 - q) / (q * q)) / f64::powi(cycle, 3)).sqrt();
    assert!(
        (reordered - survivors / cycle).abs() <= bound,
        "reorder: {reordered} at once, expected {} +- {bound}",
        survivors / cycle
    );
    assert_eq!(
        counter(&netem, "normal", "netem_delayed") as f64 + reordered,
        survivors
    );
}

#[test]
fn duplicates_arrive_right_after_their_frame_in_a_binomial_number() {
    let mut pair = pair(&[]);
    set_netem(&pair.daemon, "duplicate 1% seed 11");
    let got = tags(&exchange(&mut pair, &frames(0, FRAMES, 0)));
    let mut seen: HashMap<u32, usize> = HashMap::new();
    for tag in &got {
        *seen.entry(*tag).or_default() += 1;
    }
    let twice = seen.values().filter(|&&n| n == 2).count() as u64;
    assert_eq!(seen.len() as u32, FRAMES, "every frame arrives");
    assert!(seen.values().all(|&n| n <= 2));
    // A duplicate follows its frame at once.
    assert!(got.windows(2).all(|w| w[0] <= w[1]), "in order");
    let netem = netem_of(&pair.daemon.stats().expect("stats"));
    assert_eq!(counter(&netem, "normal", "netem_duplicated"), twice);
    assert_binomial("duplicate 1%", twice, FRAMES as u64, 0.01);
}

#[test]
fn a_corrupted_frame_differs_from_the_one_sent_in_exactly_one_bit() {
    let mut pair = pair(&[]);
    set_netem(&pair.daemon, "corrupt 2% seed 5");
    let sent = frames(0, 5000, 0);
    let got = exchange(&mut pair, &sent);
    assert_eq!(got.len(), sent.len(), "nothing lost or added");
    let mut corrupted = 0u64;
    for (got, sent) in got.iter().zip(&sent) {
        assert_eq!(got.frame.len(), sent.len());
        let bits: u32 = got
            .frame
            .iter()
            .zip(sent)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        assert!(bits <= 1, "{bits} bits differ");
        corrupted += u64::from(bits);
    }
    let netem = netem_of(&pair.daemon.stats().expect("stats"));
    assert_eq!(counter(&netem, "normal", "netem_corrupted"), corrupted);
    assert_binomial("corrupt 2%", corrupted, 5000, 0.02);
}

/// What b receives for the same input and settings, on a fresh daemon.
fn one_run(settings: &str) -> (Vec<Vec<u8>>, Value) {
    let mut pair = pair(&["--netem", settings]);
    // Sent in far less than the delay: the frames sent at once all come before the delayed
    // ones, which come in the order they were sent.
    let got = exchange(&mut pair, &frames(0, 2000, 0));
    let netem = netem_of(&pair.daemon.stats().expect("stats"));
    (got.into_iter().map(|f| f.frame).collect(), netem)
}

#[test]
fn the_same_seed_and_input_give_the_same_frames_in_the_same_order() {
    let settings = "b=delay 2s loss gemodel 2% 20% reorder 10% gap 3 duplicate 2% corrupt 2% \
                    seed 42";
    let (first, netem) = one_run(settings);
    let (second, _) = one_run(settings);
    assert_eq!(first.len(), second.len());
    assert!(first == second, "the two runs differ");
    // Every effect happened, so the comparison covered each.
    for name in [
        "netem_lost",
        "netem_duplicated",
        "netem_corrupted",
        "netem_reordered",
        "netem_delayed",
    ] {
        assert!(counter(&netem, "normal", name) > 0, "{name}: {netem}");
    }
    // Reordered frames came first, then the delayed ones.
    let reordered = counter(&netem, "normal", "netem_reordered") as usize;
    let head: Vec<u32> = first[..reordered]
        .iter()
        .filter_map(|f| udp_tag(f))
        .collect();
    assert!(head.windows(2).all(|w| w[0] < w[1]));
    // Another seed, other frames.
    let (third, _) = one_run(&settings.replace("seed 42", "seed 43"));
    assert!(first != third, "another seed gave the same frames");
}

#[test]
fn spare_high_keeps_the_priority_class_whole_and_class_all_impairs_it_too() {
    let mut pair = pair(&[]);
    let answer = set_netem(&pair.daemon, "spare-high loss 50% seed 1");
    assert_eq!(answer["high"]["settings"], Value::Null, "{answer}");
    let mut mixed = Vec::new();
    for tag in 0..1000 {
        mixed.push(dscp_frame(
            4000,
            5000,
            if tag % 2 == 0 { EF } else { 0 },
            tag,
        ));
    }
    let got = tags(&exchange(&mut pair, &mixed));
    let high = got.iter().filter(|t| *t % 2 == 0).count();
    assert_eq!(high, 500, "every priority frame arrives");
    let netem = netem_of(&pair.daemon.stats().expect("stats"));
    assert_eq!(counter(&netem, "high", "netem_lost"), 0);
    let lost = counter(&netem, "normal", "netem_lost");
    assert_eq!(500 - (got.len() as u64 - 500), lost);
    assert_binomial("normal loss 50%", lost, 500, 0.5);

    // The same loss on every class: the priority path loses too.
    set_netem(&pair.daemon, "loss 50% seed 1");
    let mixed: Vec<Vec<u8>> = (1000..2000)
        .map(|tag| dscp_frame(4000, 5000, if tag % 2 == 0 { EF } else { 0 }, tag))
        .collect();
    let got = tags(&exchange(&mut pair, &mixed));
    let high = got.iter().filter(|t| *t % 2 == 0).count() as u64;
    let netem = netem_of(&pair.daemon.stats().expect("stats"));
    assert_eq!(counter(&netem, "high", "netem_lost"), 500 - high);
    assert_binomial("high loss 50%", 500 - high, 500, 0.5);
}

#[test]
fn netem_is_set_changed_shown_and_turned_off_at_run_time() {
    let mut pair = pair(&[]);
    let answer = set_netem(&pair.daemon, "delay 30ms loss 1% seed 3");
    assert_eq!(
        answer["normal"]["settings"],
        "delay 30ms loss random 1% seed 3"
    );
    assert_eq!(answer["high"]["settings"], answer["normal"]["settings"]);
    // A delayed frame arrives, and never sooner than its delay.
    let started = Instant::now();
    let got = exchange(&mut pair, &frames(0, 20, 0));
    assert!(started.elapsed() >= Duration::from_millis(30));
    assert!(!got.is_empty());
    // One class changed, the other kept; shown without words.
    set_netem(&pair.daemon, "class high delay 1ms");
    let shown = set_netem(&pair.daemon, "");
    assert_eq!(
        shown["normal"]["settings"],
        "delay 30ms loss random 1% seed 3"
    );
    // A seed was chosen for the settings given without one, and is shown.
    let high = shown["high"]["settings"].as_str().expect("high settings");
    let seed = high.strip_prefix("delay 1ms seed ").expect(high);
    assert!(seed.parse::<u64>().is_ok(), "{high}");
    // Off: frames pass untouched, and in order.
    let off = set_netem(&pair.daemon, "off");
    assert_eq!(
        (&off["high"]["settings"], &off["normal"]["settings"]),
        (&Value::Null, &Value::Null)
    );
    let sent = frames(100, 200, 0);
    let got = exchange(&mut pair, &sent);
    let got: Vec<Vec<u8>> = got.into_iter().map(|f| f.frame).collect();
    assert!(got == sent, "frames altered after netem off");
    let stats = pair.daemon.stats().expect("stats");
    assert_eq!(netem_of(&stats)["held_now"], 0);
}

#[test]
fn bad_netem_words_are_refused_with_a_reason_and_change_nothing() {
    let pair = pair(&["--netem", "b=loss 2% seed 9"]);
    let before = set_netem(&pair.daemon, "show");
    for (words, reason) in [
        (&["loss", "2%", "slot", "3"][..], "\"slot\""),
        (&["loss", "120%"], "\"120%\""),
        (&["delay", "1ms", "1us", "distribution", "zipf"], "\"zipf\""),
        (&["reorder", "5%"], "needs a delay"),
        (&["delay", "forever"], "\"forever\""),
        (&["delay", "11s"], "more than 10 s"),
        (&["delay", "1ms", "reorder", "5%", "gap", "0"], "gap \"0\""),
        (&["seed", "x"], "seed \"x\""),
        (&["class", "urgent", "loss", "1%"], "class \"urgent\""),
        (&["rate", "1gbit"], "link PORT --rate"),
        (&["off", "loss", "1%"], "off takes no other"),
    ] {
        let mut args = vec!["netem", "b"];
        args.extend(words);
        let output = run(&pair.daemon, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{words:?} was taken");
        assert!(stderr.contains(reason), "{words:?}: {stderr}");
    }
    assert_eq!(
        set_netem(&pair.daemon, "show"),
        before,
        "a refusal changed the settings"
    );
    let output = run(&pair.daemon, &["netem", "nope", "loss", "1%"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("no port"));
    // A bad --netem at start: the daemon does not start, and says why.
    let output = Command::new(BINARY)
        .args(["--sink", "s", "--netem", "s=loss 1% jitter 3"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--netem s") && stderr.contains("\"jitter\""),
        "{stderr}"
    );
}

#[test]
fn held_frames_past_the_delay_budget_are_dropped_apart_and_spare_the_other_class() {
    // An unpaced link and the smallest NIC budget: the delay buffer gets 64 KiB.
    let mut pair = pair(&[
        "--link-rate",
        "0",
        "--rx-buffer-bytes",
        "65536",
        "--netem",
        "b=spare-high delay 2s seed 1",
    ]);
    let got = exchange(&mut pair, &frames(0, 2000, 0));
    let netem = netem_of(&pair.daemon.stats().expect("stats"));
    let dropped = counter(&netem, "normal", "netem_drops_budget");
    let delayed = counter(&netem, "normal", "netem_delayed");
    assert!(dropped > 0, "{netem}");
    assert_eq!(delayed + dropped, 2000);
    assert_eq!(got.len() as u64, delayed);
    assert_eq!(counter(&netem, "normal", "netem_lost"), 0, "not a loss");
    assert_eq!(netem["budget_bytes"], 65536);
    // The priority class is not held, and its frames pass whatever the delay buffer holds.
    let got = exchange(&mut pair, &frames(5000, 100, EF));
    assert_eq!(got.len(), 100);
    assert_eq!(
        pair.daemon
            .queue_counter("b", 0, "rx_drops_no_buffer")
            .expect("counter"),
        0
    );
}
