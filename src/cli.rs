//! Command-line interface: what the user types, parsed into checked values. Every bad value
//! gets a message naming the flag and what is wrong with it. [`crate::config::Config`] turns
//! the daemon's arguments into the one typed configuration it runs with.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::nic::moderation::CoalesceSettings;
use crate::nic::netem::{NetemAction, NetemCommand, NetemError};
use crate::port::virtio_net::MAX_QUEUE_PAIRS;
use crate::switch::{Mac, MacLock};
use crate::wire::generator::{GeneratorSpec, MAX_LEN, MIN_LEN};
use crate::wire::vxlan::VxlanSpec;

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
    /// Start or stop capturing the frames a port delivers, to a new pcapng file in the
    /// daemon's capture directory.
    Capture(CaptureArgs),
    /// Show or change a port's impairments, in tc-netem's words.
    Netem(NetemArgs),
}

impl Command {
    /// The control socket the subcommand talks to.
    pub fn control(&self) -> &std::path::Path {
        let args = match self {
            Command::Stats(args) => &args.control,
            Command::Macs(args) => args,
            Command::Rule(args) => &args.control,
            Command::Link(args) => &args.control,
            Command::Coalesce(args) => &args.control,
            Command::Residence(args) => &args.control,
            Command::Capture(args) => &args.control,
            Command::Netem(args) => &args.control,
        };
        &args.control
    }
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
        /// The rule's words (none starts with '-', so options such as --control may follow).
        #[arg(num_args = 1.., required = true)]
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
    /// The new pcapng file's name in the daemon's --capture-dir; without it, capturing stops.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  prism-vnic netem vm2 delay 100us 20us distribution normal loss gemodel 1% 10% \
reorder 5% gap 3 duplicate 0.1% corrupt 0.01% seed 42\n  prism-vnic netem vm2 spare-high loss 1%\n  \
prism-vnic netem vm2 off"
)]
pub struct NetemArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    pub port: String,
    /// [class high|normal|all | spare-high] followed by off, show (the default) or settings:
    /// delay TIME [JITTER] [distribution uniform|normal|pareto], loss [random] P [CORR],
    /// loss gemodel P [R [1-H [1-K]]], reorder P [CORR] [gap N], duplicate P [CORR],
    /// corrupt P [CORR], seed N.
    #[arg(num_args = 0..)]
    pub settings: Vec<String>,
}

/// `--control` of every subcommand. Global, so it is accepted before or after a nested
/// subcommand (`rule --control P add ...` and `rule add ... --control P` alike).
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Control socket of the running prism-vnic.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_CONTROL)]
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
    /// A VXLAN wire port on a UDP socket (RFC 7348): remote= repeatable, default UDP port
    /// 8472. Repeatable.
    #[arg(long = "vxlan", value_name = "NAME=remote=IP[:PORT],vni=N[,local=IP:PORT]", value_parser = parse_vxlan)]
    pub vxlans: Vec<(String, VxlanSpec)>,
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
    /// Worker threads per vhost-user port, each serving its share of the port's queue pairs
    /// in turn (pair p goes to thread p % N). Default: as many as the CPUs the daemon may
    /// run on (its affinity mask), at most --queues: busy threads beyond the CPUs only take
    /// turns, and a ring waits unserved while its thread is off the CPU.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=MAX_QUEUE_PAIRS as i64))]
    pub worker_threads: Option<u16>,
    /// Largest virtqueue size a guest may set up (a power of two).
    #[arg(long, default_value_t = 1024, value_parser = parse_queue_size)]
    pub queue_size: u16,
    /// Frames the NIC buffers per RX queue while the guest's ring is full.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rx_buffer: u32,
    /// Bytes the NIC of a port buffers, all its queues and classes together (at least the
    /// link's rate times --link-latency-us; see the README).
    #[arg(long, default_value_t = crate::nic::DEFAULT_BUFFER_BYTES as u64, value_parser = clap::value_parser!(u64).range(65_536..=(1 << 40)))]
    pub rx_buffer_bytes: u64,
    /// Lock a port to one source MAC: the first it sends from (until its guest
    /// disconnects), or the one given; frames from any other are dropped (repeatable).
    #[arg(long = "mac-lock", value_name = "NAME[=MAC]", value_parser = parse_mac_lock)]
    pub mac_locks: Vec<(String, MacLock)>,
    /// Smallest gso_size cut in software for a receiver without TSO: a 64 KiB frame with a
    /// gso_size of 1 would be 65,000 segments. Smaller ones are dropped and counted.
    #[arg(long, default_value_t = crate::nic::DEFAULT_MIN_GSO_SIZE, value_parser = clap::value_parser!(u16).range(1..))]
    pub min_gso_size: u16,
    /// Most MAC addresses the switch learns per port.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub mac_limit: u32,
    /// Seconds a learned MAC address stays without traffic.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub ageing: u64,
    /// Control socket for `prism-vnic stats` and the other subcommands (mode 0600; it
    /// answers root and this process's user only, unless --control-group).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL)]
    pub control: PathBuf,
    /// Group (name or number) whose members may also use the control socket (mode 0660).
    #[arg(long, value_name = "GROUP")]
    pub control_group: Option<String>,
    /// Seconds a control client has to send each request before it is disconnected.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub control_timeout: u64,
    /// Mode of the vhost-user sockets (octal; QEMU needs read and write).
    #[arg(long, value_name = "MODE", default_value = "0600", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// Group (name or number) of the vhost-user sockets, e.g. the group a non-root QEMU runs
    /// in (with --socket-mode 0660).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Mode of a directory prism-vnic creates for its sockets or captures (octal).
    #[arg(long, value_name = "MODE", default_value = "0750", value_parser = parse_mode)]
    pub socket_dir_mode: u32,
    /// Directory of the captures `prism-vnic capture` starts (default: `captures` beside the
    /// control socket). A capture is always a new file there.
    #[arg(long, value_name = "DIR")]
    pub capture_dir: Option<PathBuf>,
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
    /// Capture frames delivered to a port (or one of its RX queues) to a new pcapng file.
    #[arg(long = "pcap", value_name = "PORT[:QUEUE]=FILE", value_parser = parse_pcap_arg)]
    pub pcaps: Vec<PcapArg>,
    /// Impairments of a port's incoming frames, in tc-netem's words separated by spaces or
    /// commas: PORT=[class high|normal|all | spare-high] [delay TIME [JITTER]
    /// [distribution D]] [loss ...] [reorder ...] [duplicate P] [corrupt P] [seed N] (see
    /// `prism-vnic netem --help`). Repeatable, once per port and class.
    #[arg(long = "netem", value_name = "PORT=SETTINGS", value_parser = parse_netem_arg)]
    pub netem: Vec<(String, NetemCommand)>,
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

/// A value the command line (or a control request) cannot take, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0:?} is not a rate like 100G, 25G, 1.5G or 500M")]
    NotARate(String),
    #[error("{0:?} is outside 0 to 10T")]
    RateTooHigh(String),
    #[error("{0:?} is below 1 kbit/s")]
    RateTooLow(String),
    #[error("{0:?} is not rx-usecs=N or rx-frames=N")]
    NotACoalesceItem(String),
    #[error("{key}: {value:?} is not a number from 0 to 1000000")]
    CoalesceNumber { key: String, value: String },
    #[error("unknown key {0:?} (rx-usecs, rx-frames)")]
    CoalesceKey(String),
    #[error("{0:?} is not PORT[:QUEUE]=FILE")]
    NotAPcap(String),
    #[error("{0:?} has no file after '='")]
    PcapNoFile(String),
    #[error("{value:?}: queue {queue:?} is not a number")]
    PcapQueue { value: String, queue: String },
    #[error("port name {0:?} must be 1-32 characters of letters, digits, '-', '_' or '.'")]
    PortName(String),
    #[error("{0:?} is not NAME=VALUE")]
    NotNamed(String),
    #[error("{0:?} has nothing after '='")]
    NothingAfterEquals(String),
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("{0} is not a power of two between 64 and 32768")]
    QueueSize(u32),
    #[error("{0:?} is not a MAC address like 02:00:00:00:00:0b")]
    Mac(String),
    #[error("{0:?} is not an octal mode from 0 to 0777 like 0660")]
    Mode(String),
    #[error("generator {name}: {problem}")]
    Generator { name: String, problem: String },
    #[error("vxlan {name}: {problem}")]
    Vxlan { name: String, problem: String },
    #[error("--netem {name}: {source}")]
    Netem {
        name: String,
        #[source]
        source: NetemError,
    },
    #[error("--netem {0}: give settings (off and show are for `prism-vnic netem` at run time)")]
    NetemNotSettings(String),
}

fn parse_rules_arg(value: &str) -> Result<(Option<String>, PathBuf), ValueError> {
    match value.split_once('=') {
        Some((port, file)) if !port.contains('/') => {
            Ok((Some(parse_name(port)?), PathBuf::from(file)))
        }
        _ => Ok((None, PathBuf::from(value))),
    }
}

/// Parses a bit rate: a number with an optional K, M, G or T suffix (decimal), e.g. 25G.
pub fn parse_rate(value: &str) -> Result<u64, ValueError> {
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
        .map_err(|_| ValueError::NotARate(value.into()))?;
    let bps = number * scale;
    if !(0.0..=1e13).contains(&bps) || bps.is_nan() {
        return Err(ValueError::RateTooHigh(value.into()));
    }
    if bps > 0.0 && bps < 1000.0 {
        return Err(ValueError::RateTooLow(value.into()));
    }
    Ok(bps as u64)
}

/// Parses `rx-usecs=N,rx-frames=M` (either may be left out).
pub fn parse_coalesce(value: &str) -> Result<CoalesceSettings, ValueError> {
    let mut settings = CoalesceSettings::default();
    for item in value.split(',').filter(|item| !item.is_empty()) {
        let (key, number) = item
            .split_once('=')
            .ok_or_else(|| ValueError::NotACoalesceItem(item.into()))?;
        let number: u32 = number
            .parse()
            .ok()
            .filter(|n| *n <= 1_000_000)
            .ok_or_else(|| ValueError::CoalesceNumber {
                key: key.into(),
                value: number.into(),
            })?;
        match key {
            "rx-usecs" => settings.rx_usecs = number,
            "rx-frames" => settings.rx_frames = number,
            other => return Err(ValueError::CoalesceKey(other.into())),
        }
    }
    Ok(settings)
}

fn parse_pcap_arg(value: &str) -> Result<PcapArg, ValueError> {
    let (target, file) = value
        .split_once('=')
        .ok_or_else(|| ValueError::NotAPcap(value.into()))?;
    if file.is_empty() {
        return Err(ValueError::PcapNoFile(value.into()));
    }
    let (port, queue) = match target.split_once(':') {
        Some((port, queue)) => {
            let queue = queue.parse().map_err(|_| ValueError::PcapQueue {
                value: value.into(),
                queue: queue.into(),
            })?;
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

fn parse_mac_lock(value: &str) -> Result<(String, MacLock), ValueError> {
    match value.split_once('=') {
        None => Ok((parse_name(value)?, MacLock::Sticky)),
        Some((name, mac)) => Ok((parse_name(name)?, MacLock::Fixed(parse_mac(mac)?))),
    }
}

fn parse_name(name: &str) -> Result<String, ValueError> {
    let valid = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if valid {
        Ok(name.to_string())
    } else {
        Err(ValueError::PortName(name.into()))
    }
}

fn split_named(value: &str) -> Result<(String, &str), ValueError> {
    let (name, rest) = value
        .split_once('=')
        .ok_or_else(|| ValueError::NotNamed(value.into()))?;
    if rest.is_empty() {
        return Err(ValueError::NothingAfterEquals(value.into()));
    }
    Ok((parse_name(name)?, rest))
}

fn parse_named_path(value: &str) -> Result<(String, PathBuf), ValueError> {
    let (name, path) = split_named(value)?;
    Ok((name, PathBuf::from(path)))
}

fn parse_named_string(value: &str) -> Result<(String, String), ValueError> {
    let (name, rest) = split_named(value)?;
    Ok((name, rest.to_string()))
}

fn parse_vxlan(value: &str) -> Result<(String, VxlanSpec), ValueError> {
    let (name, spec) = split_named(value)?;
    match spec.parse() {
        Ok(spec) => Ok((name, spec)),
        Err(problem) => Err(ValueError::Vxlan { name, problem }),
    }
}

fn parse_netem_arg(value: &str) -> Result<(String, NetemCommand), ValueError> {
    let (name, text) = split_named(value)?;
    let command: NetemCommand = text.parse().map_err(|source| ValueError::Netem {
        name: name.clone(),
        source,
    })?;
    match command.action {
        NetemAction::Set(_) => Ok((name, command)),
        NetemAction::Show | NetemAction::Off => Err(ValueError::NetemNotSettings(name)),
    }
}

fn parse_queue_size(value: &str) -> Result<u16, ValueError> {
    let size: u32 = value
        .parse()
        .map_err(|_| ValueError::NotANumber(value.into()))?;
    if !(64..=32768).contains(&size) || !size.is_power_of_two() {
        return Err(ValueError::QueueSize(size));
    }
    Ok(size as u16)
}

/// Parses a file mode in octal (`0660` or `660`): permission bits only.
pub fn parse_mode(value: &str) -> Result<u32, ValueError> {
    u32::from_str_radix(value, 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| ValueError::Mode(value.into()))
}

pub fn parse_mac(value: &str) -> Result<Mac, ValueError> {
    let bytes: Vec<&str> = value.split(':').collect();
    let mut mac = [0u8; 6];
    if bytes.len() != 6 {
        return Err(ValueError::Mac(value.into()));
    }
    for (slot, byte) in mac.iter_mut().zip(bytes) {
        *slot = u8::from_str_radix(byte, 16).map_err(|_| ValueError::Mac(value.into()))?;
    }
    Ok(mac)
}

fn parse_generator(value: &str) -> Result<(String, GeneratorSpec), ValueError> {
    let (name, spec) = split_named(value)?;
    let problem = |problem: String| ValueError::Generator {
        name: name.clone(),
        problem,
    };
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
            .ok_or_else(|| problem(format!("{item:?} is not KEY=VALUE")))?;
        match key {
            "dst" => {
                generator.dst = parse_mac(val).map_err(|e| problem(format!("dst: {e}")))?;
                have_dst = true;
            }
            "src" => generator.src = parse_mac(val).map_err(|e| problem(format!("src: {e}")))?,
            "len" => {
                let len: usize = val
                    .parse()
                    .map_err(|_| problem(format!("len {val:?} is not a number")))?;
                if !(MIN_LEN..=MAX_LEN).contains(&len) {
                    return Err(problem(format!(
                        "len {len} is outside {MIN_LEN}..={MAX_LEN}"
                    )));
                }
                generator.len = len;
            }
            "flows" => {
                generator.flows = val.parse().ok().filter(|&n: &u16| n >= 1).ok_or_else(|| {
                    problem(format!("flows {val:?} is not a number from 1 to 65535"))
                })?;
            }
            "dscp" => {
                generator.dscp =
                    val.parse().ok().filter(|&d: &u8| d < 64).ok_or_else(|| {
                        problem(format!("dscp {val:?} is not a number from 0 to 63"))
                    })?;
            }
            "pps" => {
                generator.pps = val.parse().map_err(|_| {
                    problem(format!(
                        "pps {val:?} is not a number (0 = as fast as possible)"
                    ))
                })?;
            }
            other => {
                return Err(problem(format!(
                    "unknown key {other:?} (dst, src, len, flows, dscp, pps)"
                )));
            }
        }
    }
    if !have_dst {
        return Err(problem("dst=MAC is required".into()));
    }
    if generator.src[0] & 1 != 0 {
        return Err(problem("src must be a unicast MAC".into()));
    }
    Ok((name, generator))
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
    fn every_subcommand_takes_control_before_or_after_its_words() {
        let cases: &[&[&str]] = &[
            &["stats", "--control", "/c"],
            &["macs", "--control", "/c"],
            &[
                "rule",
                "--control",
                "/c",
                "add",
                "b",
                "loc",
                "1",
                "action",
                "drop",
            ],
            &[
                "rule",
                "add",
                "b",
                "loc",
                "1",
                "action",
                "drop",
                "--control",
                "/c",
            ],
            &[
                "rule",
                "add",
                "--control",
                "/c",
                "b",
                "loc",
                "1",
                "action",
                "drop",
            ],
            &["rule", "list", "b", "--control", "/c"],
            &["rule", "--control", "/c", "list", "b"],
            &["rule", "del", "b", "1", "--control", "/c"],
            &["link", "b", "--control", "/c"],
            &["coalesce", "b", "0", "rx-usecs=5", "--control", "/c"],
            &["residence", "--control", "/c"],
            &["capture", "b", "x.pcapng", "--control", "/c"],
        ];
        for case in cases {
            let cli = parse(case).unwrap_or_else(|e| panic!("{case:?}: {e}"));
            let command = cli.command.expect("a subcommand");
            assert_eq!(command.control(), std::path::Path::new("/c"), "{case:?}");
            if let Command::Rule(RuleArgs {
                action: RuleAction::Add { rule, .. },
                ..
            }) = &command
            {
                assert_eq!(rule.join(" "), "loc 1 action drop", "{case:?}");
            }
        }
        // Before the subcommand, --control is the daemon's own option: clap says so.
        let error = parse(&["--control", "/c", "stats"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot be used"), "{error}");
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
        let error = parse(&["--port", "a=/x", "--socket-mode", "0888"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("octal mode"), "{error}");
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
        assert_eq!(parse_rate("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("1777"), Err(ValueError::Mode("1777".into())));
        assert!(
            parse_rate("fast")
                .unwrap_err()
                .to_string()
                .contains("not a rate")
        );
        assert_eq!(
            parse_coalesce("rx-usec=1"),
            Err(ValueError::CoalesceKey("rx-usec".into()))
        );
    }

    #[test]
    fn generator_spec_parses() {
        let (name, spec) = parse_generator("g0=dst=02:00:00:00:00:0b,len=1518,flows=8").unwrap();
        assert_eq!(name, "g0");
        assert_eq!(spec.dst, [2, 0, 0, 0, 0, 0xb]);
        assert_eq!((spec.len, spec.flows), (1518, 8));
    }
}
