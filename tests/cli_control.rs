//! The command line's one convention for the control socket, through the real binary against
//! a running daemon: every subcommand takes `--control PATH` before or after its words (and,
//! for `rule`, before or after the action), and the request goes to that socket, never to
//! the default one, with no `--control` mistaken for a word of a rule.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::daemon::{BINARY, Daemon};

/// Runs `prism-vnic` with `args`, where the word `CONTROL` stands for the socket's path.
fn run(args: &[&str], control: &Path) -> Output {
    let control = control.to_str().expect("a UTF-8 path");
    let args: Vec<&str> = args
        .iter()
        .map(|&arg| if arg == "CONTROL" { control } else { arg })
        .collect();
    Command::new(BINARY)
        .args(&args)
        .output()
        .expect("run prism-vnic")
}

fn stdout_of_success(args: &[&str], control: &Path) -> String {
    let output = run(args, control);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn every_subcommand_takes_control_before_or_after_its_words() {
    let daemon = Daemon::start(&["a", "b"], 1).expect("daemon");
    let control = daemon.control_socket();
    let cases: &[&[&str]] = &[
        &["stats", "--control", "CONTROL"],
        &["stats", "--json", "--control", "CONTROL"],
        &["macs", "--control", "CONTROL"],
        &["rule", "list", "b", "--control", "CONTROL"],
        &["rule", "--control", "CONTROL", "list", "b"],
        &["link", "b", "--control", "CONTROL"],
        &["link", "--control", "CONTROL", "b"],
        &["coalesce", "b", "0", "--control", "CONTROL"],
        &["coalesce", "--control", "CONTROL", "b", "0"],
        &["residence", "--control", "CONTROL"],
        &["residence", "--port", "b", "--control", "CONTROL"],
        &["capture", "b", "--control", "CONTROL"],
        &["netem", "b", "--control", "CONTROL"],
        &["netem", "--control", "CONTROL", "b"],
    ];
    for case in cases {
        stdout_of_success(case, control);
    }
}

#[test]
fn a_rule_added_with_control_after_its_words_has_only_its_own_words() {
    let daemon = Daemon::start(&["a", "b"], 1).expect("daemon");
    let control = daemon.control_socket();
    stdout_of_success(
        &[
            "rule",
            "add",
            "b",
            "loc",
            "7",
            "proto",
            "udp",
            "dst-port",
            "5001",
            "action",
            "drop",
            "--control",
            "CONTROL",
        ],
        control,
    );
    stdout_of_success(
        &[
            "rule",
            "--control",
            "CONTROL",
            "add",
            "b",
            "loc",
            "8",
            "action",
            "queue",
            "0",
        ],
        control,
    );
    let listed = stdout_of_success(&["rule", "list", "b", "--control", "CONTROL"], control);
    let rules: Vec<&str> = listed
        .lines()
        .map(|line| line.split(" hits ").next().unwrap_or("").trim_end())
        .collect();
    assert_eq!(
        rules,
        [
            "loc 7 proto udp dst-port 5001 action drop",
            "loc 8 action queue 0"
        ],
        "{listed}"
    );
    stdout_of_success(&["rule", "del", "b", "7", "--control", "CONTROL"], control);
    let listed = stdout_of_success(&["rule", "--control", "CONTROL", "list", "b"], control);
    assert_eq!(listed.lines().count(), 1, "{listed}");
}

#[test]
fn a_control_path_with_nothing_behind_it_is_named_in_the_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nobody-home.sock");
    for case in [
        &["stats", "--control", "CONTROL"][..],
        &["rule", "list", "b", "--control", "CONTROL"],
        &[
            "rule",
            "add",
            "b",
            "loc",
            "1",
            "action",
            "drop",
            "--control",
            "CONTROL",
        ],
        &["macs", "--control", "CONTROL"],
    ] {
        let output = run(case, &missing);
        assert!(!output.status.success(), "{case:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&*missing.to_string_lossy()),
            "{case:?} should name {}: {stderr}",
            missing.display()
        );
    }
}
