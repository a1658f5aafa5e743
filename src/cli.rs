//! Command-line interface: what the user types, parsed into checked values. Every bad value
//! gets a message naming the flag and what is wrong with it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::port::virtio_net::MAX_QUEUE_PAIRS;
use crate::switch::Mac;
use crate::wire::generator::{GeneratorSpec, MAX_LEN, MIN_LEN};

/// Where the control socket is unless --control says otherwise.
pub const DEFAULT_CONTROL: &str = "/run/prism/control.sock";

#[derive(Debug, Parser)]
#[command(
    name = "prism-vnic",
    version,
    about = "vhost-user-net backend emulating a multi-queue 100G NIC, its ports joined by a switch",
    args_conflicts_with_subcommands = true,
    after_help = "Example:\n  prism-vnic --port vm1=/run/prism/vm1.sock --port vm2=/run/prism/vm2.sock --queues 4\n  prism-vnic stats"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the counters of a running prism-vnic (ethtool -S style, or JSON).
    Stats(StatsArgs),
    /// Print the switch's learned MAC table.
    Macs(ControlArgs),
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Control socket of the running prism-vnic.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL)]
    pub control: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Print the raw JSON answer.
    #[arg(long)]
    pub json: bool,
    /// Only this port.
    #[arg(long, value_name = "NAME")]
    pub port: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A vhost-user port: QEMU connects with -chardev socket,path=SOCKET. Repeatable.
    #[arg(long = "port", value_name = "NAME=SOCKET", value_parser = parse_named_path)]
    pub ports: Vec<(String, PathBuf)>,
    /// A port attached to an existing host tap device. Repeatable.
    #[arg(long = "tap", value_name = "NAME=IFNAME", value_parser = parse_named_string)]
    pub taps: Vec<(String, String)>,
    /// A port that discards everything it receives. Repeatable.
    #[arg(long = "sink", value_name = "NAME", value_parser = parse_name)]
    pub sinks: Vec<String>,
    /// A port that sends UDP frames at full speed: NAME=dst=MAC[,src=MAC][,len=BYTES][,flows=N].
    #[arg(long = "gen", value_name = "NAME=SPEC", value_parser = parse_generator)]
    pub generators: Vec<(String, GeneratorSpec)>,
    /// Queue pairs of every vhost-user port (QEMU's queues= must not exceed it).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=MAX_QUEUE_PAIRS as i64))]
    pub queues: u16,
    /// Largest virtqueue size a guest may set up (a power of two).
    #[arg(long, default_value_t = 1024, value_parser = parse_queue_size)]
    pub queue_size: u16,
    /// Frames the NIC buffers per RX queue while the guest's ring is full.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rx_buffer: u32,
    /// Most MAC addresses the switch learns per port.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub mac_limit: u32,
    /// Seconds a learned MAC address stays without traffic.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub ageing: u64,
    /// Control socket for `prism-vnic stats`.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL)]
    pub control: PathBuf,
}

fn parse_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if valid {
        Ok(name.to_string())
    } else {
        Err(format!(
            "port name {name:?} must be 1-32 characters of letters, digits, '-', '_' or '.'"
        ))
    }
}

fn split_named(value: &str) -> Result<(String, &str), String> {
    let (name, rest) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not NAME=VALUE"))?;
    if rest.is_empty() {
        return Err(format!("{value:?} has nothing after '='"));
    }
    Ok((parse_name(name)?, rest))
}

fn parse_named_path(value: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = split_named(value)?;
    Ok((name, PathBuf::from(path)))
}

fn parse_named_string(value: &str) -> Result<(String, String), String> {
    let (name, rest) = split_named(value)?;
    Ok((name, rest.to_string()))
}

fn parse_queue_size(value: &str) -> Result<u16, String> {
    let size: u32 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))?;
    if !(64..=32768).contains(&size) || !size.is_power_of_two() {
        return Err(format!("{size} is not a power of two between 64 and 32768"));
    }
    Ok(size as u16)
}

pub fn parse_mac(value: &str) -> Result<Mac, String> {
    let bytes: Vec<&str> = value.split(':').collect();
    let mut mac = [0u8; 6];
    if bytes.len() != 6 {
        return Err(format!(
            "{value:?} is not a MAC address like 02:00:00:00:00:0b"
        ));
    }
    for (slot, byte) in mac.iter_mut().zip(bytes) {
        *slot = u8::from_str_radix(byte, 16)
            .map_err(|_| format!("{value:?} is not a MAC address like 02:00:00:00:00:0b"))?;
    }
    Ok(mac)
}

fn parse_generator(value: &str) -> Result<(String, GeneratorSpec), String> {
    let (name, spec) = split_named(value)?;
    let mut generator = GeneratorSpec {
        dst: [0xff; 6],
        src: [0x02, 0, 0, 0, 0xff, 0x01],
        len: 64,
        flows: 1,
    };
    let mut have_dst = false;
    for item in spec.split(',') {
        let (key, val) = item
            .split_once('=')
            .ok_or_else(|| format!("generator {name}: {item:?} is not KEY=VALUE"))?;
        match key {
            "dst" => {
                generator.dst =
                    parse_mac(val).map_err(|e| format!("generator {name}: dst: {e}"))?;
                have_dst = true;
            }
            "src" => {
                generator.src = parse_mac(val).map_err(|e| format!("generator {name}: src: {e}"))?
            }
            "len" => {
                let len: usize = val
                    .parse()
                    .map_err(|_| format!("generator {name}: len {val:?} is not a number"))?;
                if !(MIN_LEN..=MAX_LEN).contains(&len) {
                    return Err(format!(
                        "generator {name}: len {len} is outside {MIN_LEN}..={MAX_LEN}"
                    ));
                }
                generator.len = len;
            }
            "flows" => {
                generator.flows = val.parse().ok().filter(|&n: &u16| n >= 1).ok_or_else(|| {
                    format!("generator {name}: flows {val:?} is not a number from 1 to 65535")
                })?;
            }
            other => {
                return Err(format!(
                    "generator {name}: unknown key {other:?} (dst, src, len, flows)"
                ));
            }
        }
    }
    if !have_dst {
        return Err(format!("generator {name}: dst=MAC is required"));
    }
    if generator.src[0] & 1 != 0 {
        return Err(format!("generator {name}: src must be a unicast MAC"));
    }
    Ok((name, generator))
}

impl RunArgs {
    /// Checks what clap cannot: at least one port, and unique names.
    pub fn validate(&self) -> Result<(), String> {
        let mut names: Vec<&str> = Vec::new();
        names.extend(self.ports.iter().map(|(n, _)| n.as_str()));
        names.extend(self.taps.iter().map(|(n, _)| n.as_str()));
        names.extend(self.sinks.iter().map(String::as_str));
        names.extend(self.generators.iter().map(|(n, _)| n.as_str()));
        if names.is_empty() {
            return Err(
                "no ports: give at least one --port NAME=SOCKET (or --tap, --sink, --gen)".into(),
            );
        }
        let mut sorted = names.clone();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(format!("port name {:?} is used twice", pair[0]));
        }
        let mut sockets: Vec<&PathBuf> = self.ports.iter().map(|(_, p)| p).collect();
        sockets.sort_unstable();
        if let Some(pair) = sockets.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(format!(
                "socket {} is given to two ports",
                pair[0].display()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("prism-vnic").chain(args.iter().copied()))
    }

    #[test]
    fn the_documented_invocation_parses() {
        let cli = parse(&[
            "--port",
            "vm1=/run/prism/vm1.sock",
            "--port",
            "vm2=/run/prism/vm2.sock",
            "--queues",
            "4",
        ])
        .unwrap();
        assert_eq!(cli.run.ports.len(), 2);
        assert_eq!(cli.run.queues, 4);
        assert!(cli.run.validate().is_ok());
    }

    #[test]
    fn stats_subcommand_parses() {
        let cli = parse(&["stats", "--control", "/tmp/c.sock", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Stats(StatsArgs { json: true, .. }))
        ));
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let error = parse(&["--port", "vm1"]).unwrap_err().to_string();
        assert!(error.contains("NAME=VALUE"), "{error}");
        let error = parse(&["--port", "a=/x", "--queues", "17"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--queues"), "{error}");
        let error = parse(&["--port", "a=/x", "--queue-size", "1000"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("power of two"), "{error}");
        let error = parse(&["--gen", "g=len=64"]).unwrap_err().to_string();
        assert!(error.contains("dst=MAC is required"), "{error}");
        let error = parse(&["--gen", "g=dst=02:00:00:00:00:0b,len=5"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("outside"), "{error}");
        let error = parse(&["--port", "a b=/x"]).unwrap_err().to_string();
        assert!(error.contains("port name"), "{error}");
    }

    #[test]
    fn duplicate_names_and_sockets_are_refused() {
        let cli = parse(&["--port", "a=/x", "--sink", "a"]).unwrap();
        assert!(cli.run.validate().unwrap_err().contains("used twice"));
        let cli = parse(&["--port", "a=/x", "--port", "b=/x"]).unwrap();
        assert!(cli.run.validate().unwrap_err().contains("two ports"));
        let cli = parse(&[]).unwrap();
        assert!(cli.run.validate().unwrap_err().contains("no ports"));
    }

    #[test]
    fn generator_spec_parses() {
        let (name, spec) = parse_generator("g0=dst=02:00:00:00:00:0b,len=1518,flows=8").unwrap();
        assert_eq!(name, "g0");
        assert_eq!(spec.dst, [2, 0, 0, 0, 0, 0xb]);
        assert_eq!((spec.len, spec.flows), (1518, 8));
    }
}
