//! Impairments inside the NIC, against the NIC tests' fake ring, on a clock the test drives.

use std::sync::atomic::Ordering;

use super::*;
use crate::classify::rules::RuleSet;
use crate::nic::NicConfig;
use crate::nic::tests::{EF, Rig, config, frame};

fn settings(text: &str) -> NetemSettings {
    match text.parse::<NetemCommand>().expect(text).action {
        NetemAction::Set(mut settings) => {
            settings.seed.get_or_insert(1);
            settings
        }
        other => panic!("{text}: {other:?}"),
    }
}

fn rig() -> Rig {
    Rig::new(1, config(), RuleSet::default())
}

fn count(rig: &Rig, class: Class, pick: impl Fn(&NetemCounters) -> &AtomicU64) -> u64 {
    pick(rig.nic.netem.counters(class)).load(Ordering::Relaxed)
}

use std::sync::atomic::AtomicU64;

#[test]
fn spare_high_impairs_the_normal_class_only() {
    let rig = rig();
    rig.nic
        .set_netem(ClassScope::Only(Class::Normal), Some(settings("loss 100%")));
    for tag in 0..10 {
        rig.send(&frame(EF, tag), 0);
        rig.send(&frame(0, 100 + tag), 0);
    }
    assert_eq!(rig.rings[0].tags(), (0..10).collect::<Vec<u8>>());
    assert_eq!(count(&rig, Class::Normal, |c| &c.netem_lost), 10);
    assert_eq!(count(&rig, Class::High, |c| &c.netem_lost), 0);
    assert!(!rig.nic.netem.is_active(Class::High));
}

#[test]
fn delayed_frames_are_held_until_their_release_time_and_then_delivered_in_order() {
    let rig = rig();
    rig.nic
        .set_netem(ClassScope::All, Some(settings("delay 1ms")));
    for tag in 0..5 {
        assert_eq!(rig.send(&frame(0, tag), tag as u64), None, "held");
    }
    assert_eq!(rig.nic.netem.held(), 5);
    assert_eq!(rig.nic.release_held(999_999), Some(1_000_000));
    assert!(rig.rings[0].tags().is_empty());
    assert_eq!(rig.nic.release_held(1_000_002), Some(1_000_003));
    assert_eq!(rig.rings[0].tags(), [0, 1, 2]);
    assert_eq!(rig.nic.release_held(2_000_000), None);
    assert_eq!(rig.rings[0].tags(), [0, 1, 2, 3, 4]);
    assert_eq!(count(&rig, Class::Normal, |c| &c.netem_delayed), 5);
    assert_eq!(rig.nic.netem.held_bytes(0).0, 0, "every byte given back");
}

#[test]
fn a_reordered_frame_overtakes_the_ones_held_for_their_delay() {
    let rig = rig();
    rig.nic.set_netem(
        ClassScope::All,
        Some(settings("delay 1ms reorder 100% gap 2")),
    );
    for tag in 1..=4 {
        rig.send(&frame(0, tag), 0);
    }
    // Every second frame goes at once; the others wait their delay.
    assert_eq!(rig.rings[0].tags(), [2, 4]);
    rig.nic.release_held(1_000_000);
    assert_eq!(rig.rings[0].tags(), [2, 4, 1, 3]);
    assert_eq!(count(&rig, Class::Normal, |c| &c.netem_reordered), 2);
}

#[test]
fn a_corrupted_frame_differs_in_exactly_one_bit_and_loses_its_checksum_promise() {
    let rig = rig();
    rig.nic
        .set_netem(ClassScope::All, Some(settings("corrupt 100%")));
    let mut sent = Vec::new();
    for tag in 0..50 {
        let frame = frame(0, tag);
        rig.send(&frame, 0);
        sent.push(frame);
    }
    let got = rig.rings[0].frames.lock().unwrap().clone();
    assert_eq!(got.len(), sent.len());
    for (got, sent) in got.iter().zip(&sent) {
        let bits: u32 = got
            .iter()
            .zip(sent)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        assert_eq!(bits, 1, "{got:?} vs {sent:?}");
    }
    let header = [
        hdr_flags::DATA_VALID | hdr_flags::NEEDS_CSUM,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        1,
        0,
    ];
    assert_eq!(corrupted_header(&header)[0], hdr_flags::NEEDS_CSUM);
    assert_eq!(corrupted_header(&header)[1..], header[1..]);
    assert_eq!(count(&rig, Class::Normal, |c| &c.netem_corrupted), 50);
}

#[test]
fn a_duplicated_frame_arrives_twice() {
    let rig = rig();
    rig.nic
        .set_netem(ClassScope::All, Some(settings("duplicate 100%")));
    rig.send(&frame(0, 7), 0);
    assert_eq!(rig.rings[0].tags(), [7, 7]);
    assert_eq!(count(&rig, Class::Normal, |c| &c.netem_duplicated), 1);
}

#[test]
fn frames_past_the_delay_buffers_budget_are_dropped_and_counted_apart_from_losses() {
    // An unpaced link: the budget is the NIC's own, here 4 KiB.
    let rig = Rig::new(
        1,
        NicConfig {
            buffer_bytes: 4096,
            ..config()
        },
        RuleSet::default(),
    );
    rig.nic
        .set_netem(ClassScope::Only(Class::Normal), Some(settings("delay 1s")));
    for tag in 0..100 {
        rig.send(&frame(0, tag), 0);
    }
    let delayed = count(&rig, Class::Normal, |c| &c.netem_delayed);
    let dropped = count(&rig, Class::Normal, |c| &c.netem_drops_budget);
    assert_eq!(delayed + dropped, 100);
    assert!(
        dropped > 0 && delayed > 0,
        "{delayed} held, {dropped} dropped"
    );
    assert_eq!(count(&rig, Class::Normal, |c| &c.netem_lost), 0);
    let (held, budget) = rig.nic.netem.held_bytes(0);
    assert!(held <= budget && budget == 4096, "{held} of {budget}");
    // The delayed frames take nothing from the queue buffers: the other class still passes.
    rig.send(&frame(EF, 200), 0);
    assert_eq!(rig.rings[0].tags(), [200]);
}

#[test]
fn the_delay_buffer_is_sized_from_the_link_rate_times_the_longest_delay() {
    let rig = rig();
    rig.nic.set_netem(
        ClassScope::All,
        Some(settings("delay 100ms 10ms distribution normal")),
    );
    // 10 Gbit/s for 100 ms + 4 x 10 ms, a quarter more: 218.75 MB.
    let (_, budget) = rig.nic.netem.held_bytes(10_000_000_000);
    assert_eq!(budget, 218_750_000);
    // Never more than the cap, never less than the NIC's budget.
    assert_eq!(rig.nic.netem.held_bytes(u64::MAX).1, MAX_HOLD_BYTES);
    assert_eq!(
        rig.nic.netem.held_bytes(1000).1,
        crate::nic::DEFAULT_BUFFER_BYTES
    );
}

#[test]
fn turning_netem_off_lets_frames_through_and_still_releases_the_held_ones() {
    let rig = rig();
    rig.nic
        .set_netem(ClassScope::All, Some(settings("delay 1ms")));
    rig.send(&frame(0, 1), 0);
    let off = rig.nic.set_netem(ClassScope::All, None);
    assert_eq!(off, [None, None]);
    rig.send(&frame(0, 2), 10);
    assert_eq!(rig.rings[0].tags(), [2]);
    rig.nic.release_held(1_000_000);
    assert_eq!(rig.rings[0].tags(), [2, 1]);
}

#[test]
fn settings_without_a_seed_get_one_that_is_shown() {
    let rig = rig();
    let mut loss = settings("loss 1%");
    loss.seed = None;
    let [high, normal] = rig.nic.set_netem(ClassScope::All, Some(loss));
    let seed = high.and_then(|s| s.seed).expect("a seed was chosen");
    assert_eq!(normal.and_then(|s| s.seed), Some(seed));
    assert_eq!(
        rig.nic.netem.settings(Class::High).unwrap().seed,
        Some(seed)
    );
}

#[test]
fn the_same_seed_drops_the_same_frames_through_the_nic() {
    let run = || {
        let rig = rig();
        rig.nic.set_netem(
            ClassScope::All,
            Some(settings("loss 30% duplicate 10% corrupt 10% seed 5")),
        );
        for tag in 0..200 {
            rig.send(&frame(0, tag), 0);
        }
        rig.rings[0].frames.lock().unwrap().clone()
    };
    let first = run();
    assert_eq!(first, run());
    assert!(first.len() < 200, "{} of 200 frames", first.len());
}
