//! prism-vnic: see `prism-vnic --help` and README.md.

use std::process::ExitCode;

use clap::Parser;
use serde_json::json;

use prism_vnic::cli::{Cli, Command, RuleAction};
use prism_vnic::config::Config;
use prism_vnic::{control, daemon};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match cli.command {
        None => Config::try_from(cli.run)
            .map_err(|e| e.to_string())
            .and_then(|config| daemon::run(config).map_err(|e| e.to_string())),
        Some(Command::Stats(args)) => {
            control::request(&args.control.control, &json!({"cmd": "stats"}))
                .map(|answer| {
                    if args.json {
                        println!("{answer}");
                    } else {
                        print!("{}", control::format_stats(&answer, args.port.as_deref()));
                    }
                })
                .map_err(|e| e.to_string())
        }
        Some(Command::Macs(args)) => control::request(&args.control, &json!({"cmd": "macs"}))
            .map(|answer| {
                for entry in answer["macs"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {}  {}s",
                        entry["mac"].as_str().unwrap_or("?"),
                        entry["port"].as_str().unwrap_or("?"),
                        entry["age_secs"]
                    );
                }
            })
            .map_err(|e| e.to_string()),
        Some(command) => nic_command(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("prism-vnic: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The NIC subcommands: one control request each, the answer printed.
fn nic_command(command: Command) -> Result<(), String> {
    let (control, request) = match command {
        Command::Rule(args) => {
            let request = match args.action {
                RuleAction::Add { port, rule } => {
                    json!({"cmd": "rule-add", "port": port, "rule": rule.join(" ")})
                }
                RuleAction::Del { port, loc } => {
                    json!({"cmd": "rule-del", "port": port, "loc": loc})
                }
                RuleAction::List { port } => json!({"cmd": "rules", "port": port}),
            };
            (args.control.control, request)
        }
        Command::Link(args) => (
            args.control.control,
            json!({"cmd": "link", "port": args.port, "rate": args.rate, "latency_us": args.latency_us,
                "delay_us": args.delay_us, "class": args.class}),
        ),
        Command::Coalesce(args) => (
            args.control.control,
            json!({"cmd": "coalesce", "port": args.port, "queue": args.queue, "settings": args.settings}),
        ),
        Command::Capture(args) => (
            args.control.control,
            json!({"cmd": "capture", "port": args.port, "queue": args.queue, "file": args.file}),
        ),
        Command::Netem(args) => (
            args.control.control,
            json!({"cmd": "netem", "port": args.port, "settings": args.settings.join(" ")}),
        ),
        Command::Residence(args) if args.reset => (
            args.control.control,
            json!({"cmd": "residence-reset", "port": args.port}),
        ),
        Command::Residence(args) => {
            let answer = control::request(&args.control.control, &json!({"cmd": "stats"}))
                .map_err(|e| e.to_string())?;
            print!(
                "{}",
                control::format_residence(&answer, args.port.as_deref())
            );
            return Ok(());
        }
        Command::Stats(_) | Command::Macs(_) => return Ok(()),
    };
    let mut answer = control::request(&control, &request).map_err(|e| e.to_string())?;
    if let Some(rules) = answer["rules"].as_array() {
        for rule in rules {
            println!(
                "{:<60} hits {}",
                rule["rule"].as_str().unwrap_or("?"),
                rule["hits"]
            );
        }
        return Ok(());
    }
    if let Some(map) = answer.as_object_mut() {
        map.remove("ok");
    }
    println!("{answer}");
    Ok(())
}
