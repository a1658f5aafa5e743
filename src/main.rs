//! prism-vnic: see `prism-vnic --help` and README.md.

use std::process::ExitCode;

use clap::Parser;
use serde::de::DeserializeOwned;
use serde_json::Value;

use prism_vnic::cli::{Cli, Command, RuleAction};
use prism_vnic::config::{Config, ConfigError};
use prism_vnic::control::ControlError;
use prism_vnic::control::protocol::{MacsAnswer, Request, RulesAnswer, StatsAnswer};
use prism_vnic::daemon::DaemonError;
use prism_vnic::{control, daemon};

/// Why prism-vnic stops with a failure: the message printed is this error's.
#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("unexpected answer: {0}")]
    Answer(#[from] serde_json::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match cli.command {
        None => Config::try_from(cli.run)
            .map_err(MainError::from)
            .and_then(|config| Ok(daemon::run(config)?)),
        Some(command) => client(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("prism-vnic: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The request a subcommand sends.
fn request_of(command: &Command) -> Request {
    match command {
        Command::Stats(_) => Request::Stats,
        Command::Macs(_) => Request::Macs,
        Command::Rule(args) => match &args.action {
            RuleAction::Add { port, rule } => Request::RuleAdd {
                port: port.clone(),
                rule: rule.join(" "),
            },
            RuleAction::Del { port, loc } => Request::RuleDel {
                port: port.clone(),
                loc: *loc,
            },
            RuleAction::List { port } => Request::Rules { port: port.clone() },
        },
        Command::Link(args) => Request::Link {
            port: args.port.clone(),
            rate: args.rate.clone(),
            latency_us: args.latency_us,
            delay_us: args.delay_us,
            class: args.class.clone(),
        },
        Command::Coalesce(args) => Request::Coalesce {
            port: args.port.clone(),
            queue: args.queue,
            settings: args.settings.clone(),
        },
        Command::Capture(args) => Request::Capture {
            port: args.port.clone(),
            queue: args.queue,
            file: args.file.clone(),
        },
        Command::Netem(args) => Request::Netem {
            port: args.port.clone(),
            settings: args.settings.join(" "),
        },
        Command::Residence(args) if args.reset => Request::ResidenceReset {
            port: args.port.clone(),
        },
        Command::Residence(_) => Request::Stats,
    }
}

/// The answer's fields as the answer type of the request.
fn typed<T: DeserializeOwned>(answer: Value) -> Result<T, MainError> {
    Ok(serde_json::from_value(answer)?)
}

/// Runs one subcommand: one control request to the socket it names, the answer printed.
fn client(command: Command) -> Result<(), MainError> {
    let answer = control::request(command.control(), &request_of(&command))?;
    match command {
        Command::Stats(args) if args.json => println!("{answer}"),
        Command::Stats(args) => print!(
            "{}",
            control::format_stats(&typed::<StatsAnswer>(answer)?, args.port.as_deref())
        ),
        Command::Residence(args) if !args.reset => print!(
            "{}",
            control::format_residence(&typed::<StatsAnswer>(answer)?, args.port.as_deref())
        ),
        Command::Macs(_) => {
            for entry in typed::<MacsAnswer>(answer)?.macs {
                println!("{}  {}  {}s", entry.mac, entry.port, entry.age_secs);
            }
        }
        Command::Rule(_) => {
            for entry in typed::<RulesAnswer>(answer)?.rules {
                println!("{:<60} hits {}", entry.rule, entry.hits);
            }
        }
        _ => println!("{answer}"),
    }
    Ok(())
}
