//! prism-vnic: see `prism-vnic --help` and README.md.

use std::process::ExitCode;

use clap::Parser;
use serde_json::json;

use prism_vnic::cli::{Cli, Command};
use prism_vnic::{control, daemon};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match cli.command {
        None => daemon::run(cli.run).map_err(|e| e.to_string()),
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("prism-vnic: {message}");
            ExitCode::FAILURE
        }
    }
}
