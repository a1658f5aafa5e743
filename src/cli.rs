//! Command-line interface: what the user types, parsed into checked values. Every bad value
//! gets a message naming the flag and what is wrong with it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::nic::moderation::CoalesceSettings;
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
    /// Flow rules of a port (like ethtool -N / -n): add, del, list.
    Rule(RuleArgs),
    /// Show or change a port's link rate and latency.
    Link(LinkArgs),
    /// Show or change a queue's interrupt moderation (like ethtool -C).
    Coalesce(CoalesceArgs),
    /// NIC residence time per queue and class (p50/p99/p99.9), or reset it.
    Residence(ResidenceArgs),
    /// Start or stop capturing the frames a port delivers, to a pcapng file.
    Capture(CaptureArgs),
}

#[derive(Debug, Args)]
pub struct RuleArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(subcommand)]
    pub action: RuleAction,
}

#[derive(Debug, Subcommand)]
pub enum RuleAction {
    /// Add a rule: PORT loc N [inner] [proto P] [src-ip A/L] [dst-ip A/L] [src-port N]
    /// [dst-port N] [dscp N] [vlan N] [pcp N] [vni N] action {queue N [class C] | class C | drop}
    Add {
        port: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        rule: Vec<String>,
    },
    /// Delete the rule at a location.
    Del { port: String, loc: u32 },
    /// List the rules with their hit counters.
    List { port: String },
}

#[derive(Debug, Args)]
pub struct LinkArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    pub port: String,
    /// New rate (e.g. 10G; 0 = unpaced).
    #[arg(long)]
    pub rate: Option<String>,
    /// New one-way latency in microseconds.
    #[arg(long)]
    pub latency_us: Option<u64>,
    /// Extra one-way delay in microseconds for the frames of `--class` only, on top of the
    /// latency (0 removes it): a known effect on the priority flow alone.
    #[arg(long, requires = "class")]
    pub delay_us: Option<u64>,
    /// The class `--delay-us` applies to: high or normal.
    #[arg(long, requires = "delay_us")]
    pub class: Option<String>,
}

#[derive(Debug, Args)]
pub struct CoalesceArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    pub port: String,
    pub queue: usize,
    /// New settings: rx-usecs=N,rx-frames=M.
    pub settings: Option<String>,
}

#[derive(Debug, Args)]
pub struct ResidenceArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Only this port.
    #[arg(long)]
    pub port: Option<String>,
    /// Clear the histograms instead of printing them.
    #[arg(long)]
    pub reset: bool,
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    pub port: String,
    /// Only this RX queue.
    #[arg(long)]
    pub queue: Option<usize>,
    /// The pcapng file to write; without it, capturing stops.
    pub file: Option<PathBuf>,
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
    /// A port whose NIC takes frames as a guest's would (classification onto its queue,
    /// per-class counters, link pacing), then discards them. Repeatable.
    #[arg(long = "sink", value_name = "NAME", value_parser = parse_name)]
    pub sinks: Vec<String>,
    /// A port that drops every frame at the switch, counting packets and bytes on its queue
    /// 0; no NIC model, the cheapest receiver (as testpmd's rxonly). Repeatable.
    #[arg(long = "discard", value_name = "NAME", value_parser = parse_name)]
    pub discards: Vec<String>,
    /// A port that sends UDP frames: NAME=dst=MAC[,src=MAC][,len=BYTES][,flows=N][,dscp=N][,pps=N]
    /// (pps 0 or absent: as fast as the switch takes them).
    #[arg(long = "gen", value_name = "NAME=SPEC", value_parser = parse_generator)]
    pub generators: Vec<(String, GeneratorSpec)>,
    /// Queue pairs of every vhost-user port (QEMU's queues= must not exceed it).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=MAX_QUEUE_PAIRS as i64))]
    pub queues: u16,
    /// Microseconds a TX worker keeps polling its ring after draining it, before it waits for
    /// the guest's kick again (0: event-driven only). Trades CPU for packet rate.
    #[arg(long, value_name = "USECS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub busy_poll_us: u64,
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
    /// Flow rules (TOML) for every port, or PORT=FILE for one. Repeatable.
    #[arg(long = "rules", value_name = "[PORT=]FILE", value_parser = parse_rules_arg)]
    pub rules: Vec<(Option<String>, PathBuf)>,
    /// Which header field marks a frame high priority when no rule matches.
    #[arg(long, value_enum, default_value_t = TrustArg::Dscp)]
    pub trust: TrustArg,
    /// Number of high-priority RX queues (queues 0..N-1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=MAX_QUEUE_PAIRS as i64))]
    pub high_queues: u16,
    /// UDP destination port decapsulated as VXLAN for classification. Repeatable.
    #[arg(long = "vxlan-port", value_name = "PORT", default_values_t = [4789u16])]
    pub vxlan_ports: Vec<u16>,
    /// Rate of every port's link on the wire (e.g. 100G, 25G, 1G, 500M; 0 = unpaced).
    #[arg(long, value_name = "RATE", default_value = "100G", value_parser = parse_rate)]
    pub link_rate: u64,
    /// One-way latency of every port's link, in microseconds.
    #[arg(long, value_name = "USECS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub link_latency_us: u64,
    /// Interrupt moderation of the normal queues: rx-usecs=N,rx-frames=M (ethtool -C).
    #[arg(long, value_name = "SPEC", default_value = "rx-usecs=0,rx-frames=0", value_parser = parse_coalesce)]
    pub coalesce: CoalesceSettings,
    /// Interrupt moderation of the high-priority queues (default: notify at once).
    #[arg(long, value_name = "SPEC", default_value = "rx-usecs=0,rx-frames=0", value_parser = parse_coalesce)]
    pub coalesce_high: CoalesceSettings,
    /// High-class frames in a row before a waiting normal frame gets a turn (0: strict priority).
    #[arg(long, default_value_t = 0)]
    pub priority_weight: u32,
    /// Capture frames delivered to a port (or one of its RX queues) to a pcapng file.
    #[arg(long = "pcap", value_name = "PORT[:QUEUE]=FILE", value_parser = parse_pcap_arg)]
    pub pcaps: Vec<PcapArg>,
    /// Serve Prometheus metrics over HTTP at ADDR (e.g. 127.0.0.1:9464), path /metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

/// `--trust` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrustArg {
    /// IP DSCP: EF (46) and CS5-CS7 (40, 48, 56) are high.
    Dscp,
    /// The outer VLAN tag's PCP: 5-7 are high.
    Pcp,
    /// Only rules make a frame high.
    None,
}

/// `--pcap` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapArg {
    pub port: String,
    pub queue: Option<usize>,
    pub file: PathBuf,
}

fn parse_rules_arg(value: &str) -> Result<(Option<String>, PathBuf), String> {
    match value.split_once('=') {
        Some((port, file)) if !port.contains('/') => {
            Ok((Some(parse_name(port)?), PathBuf::from(file)))
        }
        _ => Ok((None, PathBuf::from(value))),
    }
}

/// Parses a bit rate: a number with an optional K, M, G or T suffix (decimal), e.g. 25G.
pub fn parse_rate(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let (number, scale) = match value.char_indices().last() {
        Some((at, 'k' | 'K')) => (&value[..at], 1e3),
        Some((at, 'm' | 'M')) => (&value[..at], 1e6),
        Some((at, 'g' | 'G')) => (&value[..at], 1e9),
        Some((at, 't' | 'T')) => (&value[..at], 1e12),
        _ => (value, 1.0),
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a rate like 100G, 25G, 1.5G or 500M"))?;
    let bps = number * scale;
    if !(0.0..=1e13).contains(&bps) || bps.is_nan() {
        return Err(format!("{value:?} is outside 0 to 10T"));
    }
    if bps > 0.0 && bps < 1000.0 {
        return Err(format!("{value:?} is below 1 kbit/s"));
    }
    Ok(bps as u64)
}

/// Parses `rx-usecs=N,rx-frames=M` (either may be left out).
pub fn parse_coalesce(value: &str) -> Result<CoalesceSettings, String> {
    let mut settings = CoalesceSettings::default();
    for item in value.split(',').filter(|item| !item.is_empty()) {
        let (key, number) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not rx-usecs=N or rx-frames=N"))?;
        let number: u32 = number
            .parse()
            .ok()
            .filter(|n| *n <= 1_000_000)
            .ok_or_else(|| format!("{key}: {number:?} is not a number from 0 to 1000000"))?;
        match key {
            "rx-usecs" => settings.rx_usecs = number,
            "rx-frames" => settings.rx_frames = number,
            other => return Err(format!("unknown key {other:?} (rx-usecs, rx-frames)")),
        }
    }
    Ok(settings)
}

fn parse_pcap_arg(value: &str) -> Result<PcapArg, String> {
    let (target, file) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not PORT[:QUEUE]=FILE"))?;
    if file.is_empty() {
        return Err(format!("{value:?} has no file after '='"));
    }
    let (port, queue) = match target.split_once(':') {
        Some((port, queue)) => {
            let queue = queue
                .parse()
                .map_err(|_| format!("{value:?}: queue {queue:?} is not a number"))?;
            (port, Some(queue))
        }
        None => (target, None),
    };
    Ok(PcapArg {
        port: parse_name(port)?,
        queue,
        file: PathBuf::from(file),
    })
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
        dscp: 0,
        pps: 0,
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
            "dscp" => {
                generator.dscp = val.parse().ok().filter(|&d: &u8| d < 64).ok_or_else(|| {
                    format!("generator {name}: dscp {val:?} is not a number from 0 to 63")
                })?;
            }
            "pps" => {
                generator.pps = val.parse().map_err(|_| {
                    format!(
                        "generator {name}: pps {val:?} is not a number (0 = as fast as possible)"
                    )
                })?;
            }
            other => {
                return Err(format!(
                    "generator {name}: unknown key {other:?} (dst, src, len, flows, dscp, pps)"
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
        names.extend(self.discards.iter().map(String::as_str));
        names.extend(self.generators.iter().map(|(n, _)| n.as_str()));
        if names.is_empty() {
            return Err(
                "no ports: give at least one --port NAME=SOCKET (or --tap, --sink, --discard, --gen)".into(),
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
        let known = |port: &str| names.contains(&port);
        let discard = |port: &str| self.discards.iter().any(|name| name == port);
        for (port, file) in &self.rules {
            if let Some(port) = port.as_deref().filter(|port| !known(port)) {
                return Err(format!(
                    "--rules {port}={}: there is no port {port:?}",
                    file.display()
                ));
            }
            if let Some(port) = port.as_deref().filter(|port| discard(port)) {
                return Err(format!(
                    "--rules {port}={}: {port:?} is a discard port, which drops frames \
                     before any NIC (use --sink for a port that classifies)",
                    file.display()
                ));
            }
        }
        for pcap in &self.pcaps {
            if discard(&pcap.port) {
                return Err(format!(
                    "--pcap {}: {:?} is a discard port, which drops frames before any NIC",
                    pcap.file.display(),
                    pcap.port
                ));
            }
            if !known(&pcap.port) {
                return Err(format!(
                    "--pcap {}: there is no port {:?}",
                    pcap.file.display(),
                    pcap.port
                ));
            }
        }
        if self.high_queues > self.queues {
            return Err(format!(
                "--high-queues {} is more than --queues {}",
                self.high_queues, self.queues
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
        let cli = parse(&["--discard", "d", "--sink", "d"]).unwrap();
        assert!(cli.run.validate().unwrap_err().contains("used twice"));
        let cli = parse(&["--port", "a=/x", "--port", "b=/x"]).unwrap();
        assert!(cli.run.validate().unwrap_err().contains("two ports"));
        let cli = parse(&[]).unwrap();
        assert!(cli.run.validate().unwrap_err().contains("no ports"));
    }

    #[test]
    fn rules_and_captures_for_a_discard_port_are_refused() {
        let cli = parse(&["--discard", "d", "--rules", "d=/r.toml"]).unwrap();
        let error = cli.run.validate().unwrap_err();
        assert!(
            error.contains("--rules d=/r.toml") && error.contains("discard"),
            "{error}"
        );
        let cli = parse(&["--discard", "d", "--pcap", "d=/t.pcapng"]).unwrap();
        let error = cli.run.validate().unwrap_err();
        assert!(
            error.contains("--pcap /t.pcapng") && error.contains("discard"),
            "{error}"
        );
        // Shared rules are for the ports that have a NIC; they do not name the discard port.
        let cli = parse(&["--discard", "d", "--sink", "s", "--rules", "/r.toml"]).unwrap();
        assert!(cli.run.validate().is_ok());
    }

    #[test]
    fn nic_flags_parse_and_bad_ones_say_why() {
        let cli = parse(&[
            "--port",
            "a=/x",
            "--link-rate",
            "25G",
            "--coalesce",
            "rx-usecs=50,rx-frames=32",
            "--rules",
            "a=/r.toml",
            "--pcap",
            "a:1=/t.pcapng",
            "--trust",
            "pcp",
        ])
        .unwrap();
        assert_eq!(cli.run.link_rate, 25_000_000_000);
        assert_eq!(
            cli.run.coalesce,
            CoalesceSettings {
                rx_usecs: 50,
                rx_frames: 32
            }
        );
        assert_eq!(
            cli.run.rules,
            vec![(Some("a".to_string()), PathBuf::from("/r.toml"))]
        );
        assert_eq!(cli.run.pcaps[0].queue, Some(1));
        assert!(cli.run.validate().is_ok());
        assert_eq!(parse_rate("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_rate("0"), Ok(0));
        assert!(parse_rate("fast").unwrap_err().contains("not a rate"));
        assert!(
            parse_coalesce("rx-usec=1")
                .unwrap_err()
                .contains("unknown key")
        );
        let cli = parse(&["--port", "a=/x", "--pcap", "b=/t"]).unwrap();
        assert!(cli.run.validate().unwrap_err().contains("no port"));
        let cli = parse(&["--port", "a=/x", "--queues", "2", "--high-queues", "3"]).unwrap();
        assert!(cli.run.validate().unwrap_err().contains("more than"));
    }

    #[test]
    fn generator_spec_parses() {
        let (name, spec) = parse_generator("g0=dst=02:00:00:00:00:0b,len=1518,flows=8").unwrap();
        assert_eq!(name, "g0");
        assert_eq!(spec.dst, [2, 0, 0, 0, 0, 0xb]);
        assert_eq!((spec.len, spec.flows), (1518, 8));
    }
}
