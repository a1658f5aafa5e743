//! vhost-user negotiation with the real daemon, as QEMU 10 performs it for virtio-net.

mod support;

use support::daemon::Daemon;
use support::guest::{GuestOptions, TestGuest, WANTED_PROTOCOL_FEATURES, feature};
use support::traffic::assert_traffic_both_ways;
use support::vhost_user::VhostUserConnection;
use support::{HarnessError, TIMEOUT};
use vhost::vhost_user::VhostUserProtocolFeatures;

#[test]
fn daemon_offers_the_specified_virtio_features() {
    let daemon = Daemon::start(&["a"], 4).expect("daemon starts");
    let guest = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("connect");
    let offered = guest.negotiated().offered_features;
    let missing = feature::DAEMON_OFFERS & !offered;
    assert_eq!(
        missing, 0,
        "features not offered: {missing:#x} (offered {offered:#x})"
    );
    assert!(
        guest.has(feature::DAEMON_OFFERS),
        "a Linux guest acks them all"
    );
}

#[test]
fn daemon_offers_mq_reply_ack_and_config_but_not_status() {
    let daemon = Daemon::start(&["a"], 2).expect("daemon starts");
    let guest = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("connect");
    let offered = guest.negotiated().offered_protocol_features;
    assert_eq!(
        offered & WANTED_PROTOCOL_FEATURES,
        WANTED_PROTOCOL_FEATURES,
        "protocol features offered: {offered:#x}"
    );
    // Offering STATUS makes QEMU send GET_STATUS, which the crates do not handle.
    assert_eq!(offered & VhostUserProtocolFeatures::STATUS.bits(), 0);
}

#[test]
fn get_queue_num_answers_queue_pairs() {
    for pairs in [1u16, 4] {
        let daemon = Daemon::start(&["a"], pairs).expect("daemon starts");
        let guest =
            TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("connect");
        assert_eq!(
            guest.negotiated().queue_num,
            Some(u64::from(pairs)),
            "--queues {pairs}"
        );
        assert_eq!(guest.pairs(), pairs);
    }
}

#[test]
fn set_vring_enable_before_set_features_is_accepted() {
    // QEMU 10's order while realizing a multi-queue virtio-net; each request asks for an ack.
    let daemon = Daemon::start(&["a"], 4).expect("daemon starts");
    let mut conn = VhostUserConnection::connect(&daemon.socket("a"), TIMEOUT).expect("connect");
    let features = conn.get_features().expect("GET_FEATURES");
    assert_ne!(features & feature::PROTOCOL_FEATURES, 0);
    let protocol = conn.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
    conn.set_protocol_features(protocol & WANTED_PROTOCOL_FEATURES)
        .expect("SET_PROTOCOL_FEATURES");
    assert!(conn.reply_ack_enabled(), "REPLY_ACK negotiated");
    assert_eq!(conn.get_queue_num().expect("GET_QUEUE_NUM"), 4);
    conn.set_owner().expect("SET_OWNER");
    for vring in 0..8 {
        conn.set_vring_enable(vring, vring < 2)
            .unwrap_or_else(|e| panic!("early SET_VRING_ENABLE({vring}) refused: {e}"));
    }
    conn.set_features(features & feature::DAEMON_OFFERS)
        .expect("SET_FEATURES after the early enables");
}

#[test]
fn repeated_feature_negotiation_per_pair_is_accepted() {
    // QEMU repeats GET_FEATURES/GET_PROTOCOL_FEATURES/SET_PROTOCOL_FEATURES and SET_FEATURES
    // once per queue pair; `qemu_repeats` (the default) reproduces that. Traffic must work.
    let daemon = Daemon::start(&["a", "b"], 4).expect("daemon starts");
    let mut a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let mut b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    assert_traffic_both_ways(&mut a, &mut b, 3, 100);
}

#[test]
fn frontend_setting_up_more_pairs_than_offered_is_refused_without_crash() {
    let mut daemon = Daemon::start(&["a", "b"], 2).expect("daemon starts");
    let refused = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1).pairs(3));
    match refused {
        Err(e) => assert!(e.is_backend_refusal(), "want a refusal, got {e}"),
        Ok(_) => panic!("setting up vrings 4 and 5 of a 2-pair port succeeded"),
    }
    daemon.check_running().expect("daemon survives");
    daemon.stats().expect("daemon still answers stats");
    // The same socket takes a correct frontend afterwards.
    let mut a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let mut b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    assert_traffic_both_ways(&mut a, &mut b, 1, 200);
}

#[test]
fn request_for_a_vring_beyond_the_offered_ones_is_refused_without_crash() {
    let mut daemon = Daemon::start(&["a", "b"], 2).expect("daemon starts");
    let mut a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    let mut b = TestGuest::connect(&daemon.socket("b"), GuestOptions::linux(2)).expect("b");
    let err: HarnessError = a
        .connection()
        .set_vring_num(4, 256)
        .expect_err("SET_VRING_NUM for vring 4 of a 2-pair port");
    assert!(err.is_backend_refusal(), "want a refusal, got {err}");
    daemon.check_running().expect("daemon survives");
    // The other port is untouched; the refused one works again after reconnecting.
    let mut c = a.reconnect().expect("reconnect a");
    assert_traffic_both_ways(&mut c, &mut b, 0, 300);
}

#[test]
fn daemon_stops_cleanly_on_sigterm_with_a_connected_guest() {
    let daemon = Daemon::start(&["a", "b"], 2).expect("daemon starts");
    let _a = TestGuest::connect(&daemon.socket("a"), GuestOptions::linux(1)).expect("a");
    daemon.stop().expect("clean exit, sockets removed");
}
