//! The daemon's configuration: the command line's arguments checked together and turned into
//! one typed value. Every port is one [`PortSpec`] with its id (its index in the fabric), its
//! kind and its own rules file and capture, so nothing downstream pairs up parallel lists.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::classify::{Class, ClassifierConfig, Trust};
use crate::cli::{RunArgs, TrustArg};
use crate::control::ControlSettings;
use crate::control::access::{self, AccessError, Gid};
use crate::nic::NicConfig;
use crate::nic::link::LinkSettings;
use crate::nic::netem::{NetemAction, NetemSettings};
use crate::switch::{Mac, MacLock, PortId, SwitchConfig};
use crate::wire::generator::GeneratorSpec;
use crate::wire::vxlan::VxlanSpec;

/// The MAC address of the first vhost-user port; the next ones count up in the last byte.
const FIRST_VHOST_MAC: Mac = [0x52, 0x54, 0x00, 0x50, 0x52, 0x00];

/// What sits behind a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortBackend {
    /// A vhost-user socket a frontend (QEMU) connects to; `mac` is what the device reports.
    VhostUser { socket: PathBuf, mac: Mac },
    /// An existing host tap device.
    Tap { ifname: String },
    /// A VXLAN tunnel to remote VTEPs on a UDP socket.
    Vxlan(VxlanSpec),
    /// A NIC that classifies and paces, then discards.
    Sink,
    /// Dropped at the switch: no NIC.
    Discard,
    /// Sends UDP frames.
    Generator(GeneratorSpec),
}

impl PortBackend {
    /// Whether frames for the port reach a NIC (so rules and captures take effect there).
    pub fn has_nic(&self) -> bool {
        !matches!(self, PortBackend::Discard)
    }
}

/// A capture started with the daemon (`--pcap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSpec {
    pub queue: Option<usize>,
    pub file: PathBuf,
}

/// One port of the fabric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub id: PortId,
    pub name: String,
    pub backend: PortBackend,
    /// Its flow rules: its own file, else the file for every port with a NIC.
    pub rules: Option<PathBuf>,
    pub capture: Option<CaptureSpec>,
    /// The source address it is locked to (`--mac-lock`).
    pub mac_lock: Option<MacLock>,
    /// Its impairments at start (`--netem`), per class: high, normal.
    pub netem: [Option<NetemSettings>; 2],
}

/// The vhost-user device every vhost-user port presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostSettings {
    pub queue_pairs: u16,
    pub max_queue_size: u16,
    pub busy_poll: Duration,
    /// Worker threads per port (`--worker-threads`); `None`: one per CPU the daemon may run
    /// on. Never more than `queue_pairs`.
    pub worker_threads: Option<u16>,
}

/// How the daemon creates the sockets others connect to and the directories they are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSettings {
    /// Mode of the vhost-user sockets.
    pub mode: u32,
    /// Group of the vhost-user sockets (the daemon's own if none).
    pub group: Option<Gid>,
    /// Mode of a directory created for a socket or the captures.
    pub dir_mode: u32,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Every port, `ports[id].id == id`.
    pub ports: Vec<PortSpec>,
    pub vhost: VhostSettings,
    pub nic: NicConfig,
    pub switch: SwitchConfig,
    pub control: ControlSettings,
    pub sockets: SocketSettings,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no ports: give at least one --port NAME=SOCKET (or --tap, --vxlan, --sink, --discard, --gen)"
    )]
    NoPorts,
    #[error("port name {0:?} is used twice")]
    NameTwice(String),
    #[error("socket {} is given to two ports", .0.display())]
    SocketTwice(PathBuf),
    #[error("--rules {port}={}: there is no port {port:?}", .file.display())]
    RulesUnknownPort { port: String, file: PathBuf },
    #[error(
        "--rules {port}={}: {port:?} is a discard port, which drops frames before any NIC \
         (use --sink for a port that classifies)", .file.display()
    )]
    RulesDiscardPort { port: String, file: PathBuf },
    #[error("--pcap {}: there is no port {port:?}", .file.display())]
    PcapUnknownPort { port: String, file: PathBuf },
    #[error("--pcap {}: {port:?} is a discard port, which drops frames before any NIC", .file.display())]
    PcapDiscardPort { port: String, file: PathBuf },
    #[error("--pcap: port {0:?} is captured twice")]
    PcapTwice(String),
    #[error("--high-queues {high} is more than --queues {queues}")]
    HighQueues { high: u16, queues: u16 },
    #[error("--mac-lock {0}: there is no port {0:?}")]
    MacLockUnknownPort(String),
    #[error("--netem {0}=...: there is no port {0:?}")]
    NetemUnknownPort(String),
    #[error("--netem {0}=...: {0:?} is a discard port, which drops frames before any NIC")]
    NetemDiscardPort(String),
    #[error("--netem {port}=...: the {class} class of {port:?} is given impairments twice")]
    NetemTwice { port: String, class: Class },
    #[error("{option}: {source}")]
    Group {
        option: &'static str,
        #[source]
        source: AccessError,
    },
}

impl TryFrom<RunArgs> for Config {
    type Error = ConfigError;

    fn try_from(args: RunArgs) -> Result<Self, ConfigError> {
        let mut backends: Vec<(String, PortBackend)> = Vec::new();
        for (index, (name, socket)) in args.ports.iter().enumerate() {
            let mut mac = FIRST_VHOST_MAC;
            mac[5] = index as u8;
            let socket = socket.clone();
            backends.push((name.clone(), PortBackend::VhostUser { socket, mac }));
        }
        for (name, ifname) in &args.taps {
            let ifname = ifname.clone();
            backends.push((name.clone(), PortBackend::Tap { ifname }));
        }
        for (name, spec) in &args.vxlans {
            backends.push((name.clone(), PortBackend::Vxlan(spec.clone())));
        }
        backends.extend(args.sinks.iter().map(|n| (n.clone(), PortBackend::Sink)));
        backends.extend(
            args.discards
                .iter()
                .map(|n| (n.clone(), PortBackend::Discard)),
        );
        for (name, spec) in &args.generators {
            backends.push((name.clone(), PortBackend::Generator(spec.clone())));
        }
        if backends.is_empty() {
            return Err(ConfigError::NoPorts);
        }
        check_unique(backends.iter().map(|(name, _)| name))
            .map_err(|name| ConfigError::NameTwice(name.clone()))?;
        check_unique(args.ports.iter().map(|(_, socket)| socket))
            .map_err(|socket| ConfigError::SocketTwice(socket.clone()))?;

        let backend_of = |port: &str| {
            backends
                .iter()
                .find(|(name, _)| name == port)
                .map(|(_, backend)| backend)
        };
        for (port, file) in &args.rules {
            let Some(port) = port else { continue };
            let (port, file) = (port.clone(), file.clone());
            match backend_of(&port) {
                None => return Err(ConfigError::RulesUnknownPort { port, file }),
                Some(backend) if !backend.has_nic() => {
                    return Err(ConfigError::RulesDiscardPort { port, file });
                }
                Some(_) => {}
            }
        }
        for pcap in &args.pcaps {
            let (port, file) = (pcap.port.clone(), pcap.file.clone());
            match backend_of(&port) {
                None => return Err(ConfigError::PcapUnknownPort { port, file }),
                Some(backend) if !backend.has_nic() => {
                    return Err(ConfigError::PcapDiscardPort { port, file });
                }
                Some(_) => {}
            }
        }
        if let Some((port, _)) = args
            .mac_locks
            .iter()
            .find(|(port, _)| backend_of(port).is_none())
        {
            return Err(ConfigError::MacLockUnknownPort(port.clone()));
        }
        for (port, _) in &args.netem {
            match backend_of(port) {
                None => return Err(ConfigError::NetemUnknownPort(port.clone())),
                Some(backend) if !backend.has_nic() => {
                    return Err(ConfigError::NetemDiscardPort(port.clone()));
                }
                Some(_) => {}
            }
        }
        check_unique(args.pcaps.iter().map(|pcap| &pcap.port))
            .map_err(|port| ConfigError::PcapTwice(port.clone()))?;
        if args.high_queues > args.queues {
            return Err(ConfigError::HighQueues {
                high: args.high_queues,
                queues: args.queues,
            });
        }
        let group = |option, name: &Option<String>| {
            name.as_deref()
                .map(access::resolve_group)
                .transpose()
                .map_err(|source| ConfigError::Group { option, source })
        };
        let control = ControlSettings {
            path: args.control.clone(),
            group: group("--control-group", &args.control_group)?,
            timeout: Duration::from_secs(args.control_timeout),
            capture_dir: args
                .capture_dir
                .clone()
                .unwrap_or_else(|| default_capture_dir(&args.control)),
        };
        let sockets = SocketSettings {
            mode: args.socket_mode,
            group: group("--socket-group", &args.socket_group)?,
            dir_mode: args.socket_dir_mode,
        };

        let shared_rules = args.rules.iter().find(|(port, _)| port.is_none());
        let ports = backends
            .into_iter()
            .enumerate()
            .map(|(id, (name, backend))| {
                // Generators have a NIC only for the frames sent back to them, which they
                // discard: rules shared by every port are not for them.
                let takes_shared = matches!(
                    backend,
                    PortBackend::VhostUser { .. }
                        | PortBackend::Tap { .. }
                        | PortBackend::Vxlan(_)
                        | PortBackend::Sink
                );
                let own = args
                    .rules
                    .iter()
                    .find(|(port, _)| port.as_deref() == Some(name.as_str()));
                let rules = own
                    .or(shared_rules.filter(|_| takes_shared))
                    .map(|(_, file)| file.clone());
                let capture = args
                    .pcaps
                    .iter()
                    .find(|pcap| pcap.port == name)
                    .map(|pcap| CaptureSpec {
                        queue: pcap.queue,
                        file: pcap.file.clone(),
                    });
                let mac_lock = args
                    .mac_locks
                    .iter()
                    .find(|(port, _)| *port == name)
                    .map(|(_, lock)| *lock);
                let netem = netem_of(&args, &name)?;
                Ok(PortSpec {
                    id,
                    name,
                    backend,
                    rules,
                    capture,
                    mac_lock,
                    netem,
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Config {
            ports,
            vhost: VhostSettings {
                queue_pairs: args.queues,
                max_queue_size: args.queue_size,
                busy_poll: Duration::from_micros(args.busy_poll_us),
                worker_threads: args.worker_threads,
            },
            nic: nic_config(&args),
            switch: SwitchConfig {
                ageing_secs: args.ageing,
                mac_limit: args.mac_limit as usize,
            },
            control,
            sockets,
            metrics: args.metrics,
        })
    }
}

/// The impairments `--netem` gives port `name`, per class.
fn netem_of(args: &RunArgs, name: &str) -> Result<[Option<NetemSettings>; 2], ConfigError> {
    let mut netem = [None, None];
    for (port, command) in args.netem.iter().filter(|(port, _)| port == name) {
        let NetemAction::Set(settings) = command.action else {
            continue;
        };
        for (slot, class) in netem.iter_mut().zip([Class::High, Class::Normal]) {
            if !command.scope.includes(class) {
                continue;
            }
            if slot.is_some() {
                let port = port.clone();
                return Err(ConfigError::NetemTwice { port, class });
            }
            *slot = Some(settings);
        }
    }
    Ok(netem)
}

/// `captures` beside the control socket: a directory of the daemon's own, not one others
/// write to.
fn default_capture_dir(control: &Path) -> PathBuf {
    control
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("captures")
}

/// The first item given twice, if any.
fn check_unique<T: Ord>(items: impl Iterator<Item = T>) -> Result<(), T> {
    let mut sorted: Vec<T> = items.collect();
    sorted.sort_unstable();
    let mut iter = sorted.into_iter();
    let Some(mut previous) = iter.next() else {
        return Ok(());
    };
    for item in iter {
        if item == previous {
            return Err(item);
        }
        previous = item;
    }
    Ok(())
}

fn nic_config(args: &RunArgs) -> NicConfig {
    let trust = match args.trust {
        TrustArg::Dscp => Trust::default_dscp(),
        TrustArg::Pcp => Trust::default_pcp(),
        TrustArg::None => Trust::None,
    };
    NicConfig {
        buffer_frames: args.rx_buffer as usize,
        buffer_bytes: usize::try_from(args.rx_buffer_bytes).unwrap_or(usize::MAX),
        min_gso_size: args.min_gso_size,
        link: LinkSettings {
            rate_bps: args.link_rate,
            latency_ns: args.link_latency_us * 1000,
        },
        coalesce_high: args.coalesce_high,
        coalesce_normal: args.coalesce,
        priority_weight: args.priority_weight,
        classifier: ClassifierConfig {
            high_queues: args.high_queues,
            trust,
            vxlan_ports: args.vxlan_ports.clone(),
            ..ClassifierConfig::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;
    use std::path::Path;

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("prism-vnic").chain(args.iter().copied()))
            .expect("arguments parse");
        Config::try_from(cli.run)
    }

    fn error(args: &[&str]) -> String {
        config(args).unwrap_err().to_string()
    }

    #[test]
    fn every_port_is_one_spec_with_its_id_kind_rules_and_capture() {
        let config = config(&[
            "--port",
            "vm1=/s/vm1.sock",
            "--port",
            "vm2=/s/vm2.sock",
            "--sink",
            "s",
            "--discard",
            "d",
            "--gen",
            "g=dst=02:00:00:00:00:0b",
            "--rules",
            "/all.toml",
            "--rules",
            "vm2=/vm2.toml",
            "--pcap",
            "s:0=/cap/s.pcapng",
            "--control",
            "/run/x/control.sock",
        ])
        .unwrap();
        let names: Vec<&str> = config.ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["vm1", "vm2", "s", "d", "g"]);
        assert!(config.ports.iter().enumerate().all(|(i, p)| p.id == i));
        assert_eq!(
            config.ports[1].backend,
            PortBackend::VhostUser {
                socket: "/s/vm2.sock".into(),
                mac: [0x52, 0x54, 0x00, 0x50, 0x52, 0x01]
            }
        );
        let rules: Vec<Option<&str>> = config
            .ports
            .iter()
            .map(|p| p.rules.as_deref().and_then(Path::to_str))
            .collect();
        assert_eq!(
            rules,
            [
                Some("/all.toml"),
                Some("/vm2.toml"),
                Some("/all.toml"),
                None,
                None
            ]
        );
        assert_eq!(
            config.ports[2].capture,
            Some(CaptureSpec {
                queue: Some(0),
                file: "/cap/s.pcapng".into()
            })
        );
        assert_eq!(config.control.path, Path::new("/run/x/control.sock"));
        assert_eq!(config.control.capture_dir, Path::new("/run/x/captures"));
        assert_eq!(config.control.mode(), 0o600);
        assert_eq!(config.sockets.mode, 0o600);
        assert_eq!(config.sockets.dir_mode, 0o750);
    }

    #[test]
    fn duplicate_names_and_sockets_are_refused() {
        assert!(error(&["--port", "a=/x", "--sink", "a"]).contains("used twice"));
        assert!(error(&["--discard", "d", "--sink", "d"]).contains("used twice"));
        assert!(error(&["--port", "a=/x", "--port", "b=/x"]).contains("two ports"));
        assert!(error(&[]).contains("no ports"));
    }

    #[test]
    fn rules_and_captures_for_a_discard_port_are_refused() {
        let e = error(&["--discard", "d", "--rules", "d=/r.toml"]);
        assert!(
            e.contains("--rules d=/r.toml") && e.contains("discard"),
            "{e}"
        );
        let e = error(&["--discard", "d", "--pcap", "d=/t.pcapng"]);
        assert!(
            e.contains("--pcap /t.pcapng") && e.contains("discard"),
            "{e}"
        );
        // Shared rules are for the ports that have a NIC; they do not name the discard port.
        assert!(config(&["--discard", "d", "--sink", "s", "--rules", "/r.toml"]).is_ok());
    }

    #[test]
    fn references_to_unknown_ports_and_bad_counts_are_refused() {
        assert!(error(&["--port", "a=/x", "--pcap", "b=/t"]).contains("no port"));
        assert!(error(&["--port", "a=/x", "--rules", "b=/t"]).contains("no port"));
        let e = error(&["--sink", "a", "--pcap", "a=/t", "--pcap", "a:0=/u"]);
        assert!(e.contains("captured twice"), "{e}");
        let e = error(&["--port", "a=/x", "--queues", "2", "--high-queues", "3"]);
        assert!(e.contains("more than"), "{e}");
        let e = error(&["--sink", "a", "--control-group", "no-such-group-prism"]);
        assert!(
            e.contains("--control-group") && e.contains("no group"),
            "{e}"
        );
    }

    #[test]
    fn netem_settings_go_to_their_port_and_class_once() {
        let config = config(&[
            "--port",
            "vm1=/s/vm1.sock",
            "--sink",
            "s",
            "--netem",
            "vm1=spare-high,loss,1%,seed,4",
            "--netem",
            "vm1=class high delay 1ms",
            "--netem",
            "s=duplicate 2%",
        ])
        .unwrap();
        let [high, normal] = config.ports[0].netem;
        assert_eq!(high.unwrap().to_string(), "delay 1ms");
        assert_eq!(normal.unwrap().to_string(), "loss random 1% seed 4");
        assert!(config.ports[1].netem.iter().all(Option::is_some));
        let e = error(&[
            "--sink",
            "s",
            "--netem",
            "s=loss 1%",
            "--netem",
            "s=spare-high delay 1ms",
        ]);
        assert!(e.contains("normal class") && e.contains("twice"), "{e}");
        let e = error(&["--sink", "s", "--netem", "t=loss 1%"]);
        assert!(e.contains("no port \"t\""), "{e}");
        let e = error(&["--discard", "d", "--netem", "d=loss 1%"]);
        assert!(e.contains("discard"), "{e}");
        let e = Cli::try_parse_from(["prism-vnic", "--sink", "s", "--netem", "s=loss 1% slot 2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--netem s") && e.contains("\"slot\""), "{e}");
        let e = Cli::try_parse_from(["prism-vnic", "--sink", "s", "--netem", "s=off"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("give settings"), "{e}");
    }

    #[test]
    fn a_control_group_opens_the_control_socket_to_it() {
        let config = config(&["--sink", "a", "--control-group", "0"]).unwrap();
        assert_eq!(config.control.group, Some(0));
        assert_eq!(config.control.mode(), 0o660);
    }
}
