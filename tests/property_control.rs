//! Property-based tests of the control protocol, the one type the server and the CLI share:
//! every request survives the trip through its line form unchanged, no line a local user
//! sends (random bytes, random JSON, requests with fields of the wrong type) makes the
//! server's parser panic, and a line longer than the limit is refused whatever it holds.

use std::path::PathBuf;

use prism_vnic::control::protocol::{MAX_REQUEST, Reply, Request, RequestError};
use proptest::prelude::*;
use serde_json::Value;

fn name() -> impl Strategy<Value = String> {
    // Any characters, quotes and backslashes and control characters included: the line
    // form must escape them.
    any::<String>()
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Stats),
        Just(Request::Macs),
        name().prop_map(|port| Request::Rules { port }),
        (name(), name()).prop_map(|(port, rule)| Request::RuleAdd { port, rule }),
        (name(), any::<u32>()).prop_map(|(port, loc)| Request::RuleDel { port, loc }),
        (
            name(),
            proptest::option::of(name()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(name()),
        )
            .prop_map(|(port, rate, latency_us, delay_us, class)| Request::Link {
                port,
                rate,
                latency_us,
                delay_us,
                class,
            }),
        (name(), any::<usize>(), proptest::option::of(name())).prop_map(
            |(port, queue, settings)| Request::Coalesce {
                port,
                queue,
                settings
            }
        ),
        (name(), any::<u32>()).prop_map(|(port, weight)| Request::PriorityWeight { port, weight }),
        proptest::option::of(name()).prop_map(|port| Request::ResidenceReset { port }),
        (
            name(),
            proptest::option::of(any::<usize>()),
            proptest::option::of(name().prop_map(PathBuf::from)),
        )
            .prop_map(|(port, queue, file)| Request::Capture { port, queue, file }),
        (name(), name()).prop_map(|(port, settings)| Request::Netem { port, settings }),
    ]
}

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // No floats: the protocol has none, and serde_json (without `float_roundtrip`, and
        // through serde's flatten) may read a float's last bit back differently.
        name().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((name(), inner), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// The names the server knows, so random objects often get past the first check.
const COMMANDS: [&str; 13] = [
    "stats",
    "macs",
    "rules",
    "rule-add",
    "rule-del",
    "link",
    "coalesce",
    "priority-weight",
    "residence-reset",
    "capture",
    "netem",
    "",
    "STATS",
];

/// A JSON object with a known (or almost known) `cmd` and random fields, some named as the
/// requests' fields are, with values of any type.
fn near_request() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("port".to_string()),
        Just("rule".to_string()),
        Just("loc".to_string()),
        Just("queue".to_string()),
        Just("file".to_string()),
        Just("settings".to_string()),
        Just("weight".to_string()),
        name(),
    ];
    (
        prop::sample::select(&COMMANDS[..]),
        prop::collection::vec((field, json()), 0..6),
    )
        .prop_map(|(cmd, fields)| {
            let mut object: serde_json::Map<String, Value> = fields.into_iter().collect();
            object.insert("cmd".to_string(), Value::from(cmd));
            Value::Object(object)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_request_survives_its_line_form(request in request()) {
        let line = request.to_line();
        prop_assert_eq!(line.last(), Some(&b'\n'));
        prop_assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let text = std::str::from_utf8(&line[..line.len() - 1]).unwrap();
        if text.len() <= MAX_REQUEST {
            prop_assert_eq!(Request::parse(text).unwrap(), request);
        }
    }

    #[test]
    fn random_bytes_never_panic_the_parser(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let line = String::from_utf8_lossy(&bytes);
        let _ = Request::parse(&line);
    }

    #[test]
    fn random_json_never_panics_the_parser(value in json()) {
        let _ = Request::parse(&value.to_string());
    }

    #[test]
    fn requests_with_fields_of_any_type_never_panic_the_parser(value in near_request()) {
        if let Ok(request) = Request::parse(&value.to_string()) {
            // What is accepted is a request that writes back to a line the parser takes.
            let line = request.to_line();
            let text = std::str::from_utf8(&line[..line.len() - 1]).unwrap();
            prop_assert_eq!(Request::parse(text).unwrap(), request);
        }
    }

    #[test]
    fn a_line_over_the_limit_is_refused_whatever_it_holds(
        request in request(),
        padding in 1usize..4096,
    ) {
        // A valid request, padded with spaces (which JSON allows) past the limit.
        let line = request.to_line();
        let text = std::str::from_utf8(&line[..line.len() - 1]).unwrap();
        let long = format!("{text}{}", " ".repeat(MAX_REQUEST + padding - text.len().min(MAX_REQUEST)));
        prop_assert!(long.len() > MAX_REQUEST);
        prop_assert!(matches!(Request::parse(&long), Err(RequestError::TooLarge)));
    }

    #[test]
    fn a_reply_survives_its_line_form(error in proptest::option::of(name()), value in json()) {
        let reply = match error {
            Some(error) => Reply::refused(error),
            // An answer's fields go beside `ok` and `error`, so no answer type has those.
            None => Reply::answer(match value {
                Value::Object(mut fields) => {
                    fields.remove("ok");
                    fields.remove("error");
                    Value::Object(fields)
                }
                other => other,
            }),
        };
        let line = reply.to_line();
        let text = std::str::from_utf8(&line[..line.len() - 1]).unwrap();
        let back: Reply = serde_json::from_str(text).unwrap();
        prop_assert_eq!(back, reply);
    }
}
