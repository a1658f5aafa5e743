//! Prometheus metrics (`--metrics ADDR`): every counter of every port, queue and class, the
//! rule hits, the switch, and the NIC residence histograms, in the Prometheus text format
//! (or OpenMetrics, when the scraper asks for it).
//!
//! Nothing is added to the data path: a scrape reads the same atomics and histograms the
//! control socket's `stats` reads, when it comes. The format is prometheus-client's.

pub mod server;

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::classify::Class;
use crate::stats::{NetemCounters, PortCounters, QueueCounters, SwitchCounters};
use crate::switch::fabric::Fabric;

/// Upper bounds of the residence histogram's buckets, in nanoseconds: 250 ns to 1 s, three
/// per decade, which covers an idle NIC (a microsecond or two) up to a paced link behind a
/// long backlog.
pub const RESIDENCE_BOUNDS_NS: [u64; 21] = [
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// The classes of the residence histograms, in the order `RxQueue::residence_buckets`
/// returns them.
const CLASSES: [&str; 2] = ["high", "normal"];

/// A registry whose one collector reads `fabric` at each scrape; every name starts with
/// `prism_vnic_`.
pub fn registry(fabric: Arc<Fabric>) -> Registry {
    let mut registry = Registry::with_prefix("prism_vnic");
    registry.register_collector(Box::new(FabricCollector { fabric }));
    registry
}

/// Renders the registry as Prometheus text (version 0.0.4), or OpenMetrics text.
pub fn render(registry: &Registry, openmetrics: bool) -> Result<String, fmt::Error> {
    let mut out = String::new();
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, registry)?;
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    }
    Ok(out)
}

struct FabricCollector {
    fabric: Arc<Fabric>,
}

impl fmt::Debug for FabricCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FabricCollector")
            .field("ports", &self.fabric.ports.len())
            .finish()
    }
}

/// A counter set's values by name, as `snapshot()` gives them.
type Snapshot = Vec<(&'static str, u64)>;

/// One sample: its labels and value.
type Sample = (Vec<(&'static str, String)>, u64);

/// Writes one family of counters or gauges.
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: &[Sample],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in samples {
        let metric = family.encode_family(labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*value).encode(metric)?,
            _ => ConstGauge::new(*value as i64).encode(metric)?,
        }
    }
    Ok(())
}

/// One sample of a gauge that is not a whole number.
type FloatSample = (Vec<(&'static str, String)>, f64);

fn float_gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: &[FloatSample],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn port_label(name: &str) -> Vec<(&'static str, String)> {
    vec![("port", name.to_string())]
}

fn queue_labels(name: &str, queue: usize) -> Vec<(&'static str, String)> {
    vec![("port", name.to_string()), ("queue", queue.to_string())]
}

impl FabricCollector {
    fn queue_counters(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let snapshots: Vec<(&str, Vec<Snapshot>)> = self
            .fabric
            .ports
            .iter()
            .map(|port| {
                let queues = port.queue_counters.iter().map(|q| q.snapshot()).collect();
                (port.name.as_str(), queues)
            })
            .collect();
        for (index, (name, help)) in QueueCounters::NAMES
            .iter()
            .zip(QueueCounters::HELP)
            .enumerate()
        {
            let samples: Vec<Sample> = snapshots
                .iter()
                .flat_map(|(port, queues)| {
                    queues.iter().enumerate().map(move |(queue, snapshot)| {
                        (queue_labels(port, queue), snapshot[index].1)
                    })
                })
                .collect();
            family(encoder, name, help, None, MetricType::Counter, &samples)?;
        }
        Ok(())
    }

    fn port_counters(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let snapshots: Vec<(&str, Snapshot)> = self
            .fabric
            .ports
            .iter()
            .map(|port| (port.name.as_str(), port.nic.port_counters.snapshot()))
            .collect();
        for (index, (name, help)) in PortCounters::NAMES
            .iter()
            .zip(PortCounters::HELP)
            .enumerate()
        {
            let samples: Vec<Sample> = snapshots
                .iter()
                .map(|(port, snapshot)| (port_label(port), snapshot[index].1))
                .collect();
            family(encoder, name, help, None, MetricType::Counter, &samples)?;
        }
        Ok(())
    }

    /// The impairments' counters per port and class, and the frames their delay holds.
    fn netem(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let snapshots: Vec<(Vec<(&'static str, String)>, Snapshot)> = self
            .fabric
            .ports
            .iter()
            .flat_map(|port| {
                [Class::High, Class::Normal].map(|class| {
                    let labels = vec![("port", port.name.clone()), ("class", class.to_string())];
                    (labels, port.nic.netem.counters(class).snapshot())
                })
            })
            .collect();
        for (index, (name, help)) in NetemCounters::NAMES
            .iter()
            .zip(NetemCounters::HELP)
            .enumerate()
        {
            let samples: Vec<Sample> = snapshots
                .iter()
                .map(|(labels, snapshot)| (labels.clone(), snapshot[index].1))
                .collect();
            family(encoder, name, help, None, MetricType::Counter, &samples)?;
        }
        let held: Vec<Sample> = self
            .fabric
            .ports
            .iter()
            .map(|port| (port_label(&port.name), port.nic.netem.held() as u64))
            .collect();
        family(
            encoder,
            "netem_held_frames",
            "Frames the port's impairments hold for their delay now.",
            None,
            MetricType::Gauge,
            &held,
        )
    }

    fn switch_counters(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let snapshot = self.fabric.switch.counters.snapshot();
        for ((name, value), help) in snapshot.iter().zip(SwitchCounters::HELP) {
            let samples = [(Vec::new(), *value)];
            let name = format!("switch_{name}");
            family(encoder, &name, help, None, MetricType::Counter, &samples)?;
        }
        let entries = self.fabric.switch.entries().len() as u64;
        family(
            encoder,
            "switch_mac_entries",
            "MAC addresses in the switch's table now.",
            None,
            MetricType::Gauge,
            &[(Vec::new(), entries)],
        )
    }

    fn port_state(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let ports = &self.fabric.ports;
        let connected: Vec<Sample> = ports
            .iter()
            .map(|port| {
                let labels = vec![
                    ("port", port.name.clone()),
                    ("kind", port.kind.label().to_string()),
                ];
                (labels, u64::from(port.nic.is_connected()))
            })
            .collect();
        family(
            encoder,
            "port_connected",
            "1 while the port has a frontend (a guest, a tap, a wire) attached.",
            None,
            MetricType::Gauge,
            &connected,
        )?;
        let weight: Vec<Sample> = ports
            .iter()
            .map(|port| {
                let weight = u64::from(port.nic.priority_weight());
                (port_label(&port.name), weight)
            })
            .collect();
        family(
            encoder,
            "priority_weight",
            "High-class frames in a row before a waiting normal frame gets a turn (0: strict).",
            None,
            MetricType::Gauge,
            &weight,
        )?;
        let rate: Vec<FloatSample> = ports
            .iter()
            .map(|port| {
                let bps = port.nic.link.settings().rate_bps;
                (port_label(&port.name), bps as f64 / 8.0)
            })
            .collect();
        float_gauges(
            encoder,
            "link_rate_bytes_per_second",
            "Rate the port's link is paced at, preamble, IFG and FCS included (0: unpaced).",
            None,
            &rate,
        )?;
        let latency: Vec<FloatSample> = ports
            .iter()
            .map(|port| {
                let ns = port.nic.link.settings().latency_ns;
                (port_label(&port.name), ns as f64 / 1e9)
            })
            .collect();
        float_gauges(
            encoder,
            "link_latency",
            "One-way latency of the port's link.",
            Some(&Unit::Seconds),
            &latency,
        )
    }

    fn queue_state(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let mut buffered = Vec::new();
        let mut enabled = Vec::new();
        for port in &self.fabric.ports {
            for (index, queue) in port.nic.queues().iter().enumerate() {
                buffered.push((queue_labels(&port.name, index), queue.buffered() as u64));
                enabled.push((
                    queue_labels(&port.name, index),
                    u64::from(queue.is_enabled()),
                ));
            }
        }
        family(
            encoder,
            "rx_buffered_frames",
            "Frames waiting in the NIC's buffer of this RX queue now.",
            None,
            MetricType::Gauge,
            &buffered,
        )?;
        family(
            encoder,
            "rx_queue_enabled",
            "1 while the guest has this RX queue enabled.",
            None,
            MetricType::Gauge,
            &enabled,
        )
    }

    fn rule_hits(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let mut samples = Vec::new();
        for port in &self.fabric.ports {
            let classifier = port.nic.rules();
            let rules = classifier.rules();
            for (loc, hits) in rules.hits() {
                let text = rules
                    .rules()
                    .iter()
                    .find(|rule| rule.location == loc)
                    .map_or_else(String::new, ToString::to_string);
                let labels = vec![
                    ("port", port.name.clone()),
                    ("loc", loc.to_string()),
                    ("rule", text),
                ];
                samples.push((labels, hits));
            }
        }
        family(
            encoder,
            "rule_hits",
            "Frames that matched the flow rule at this location (ethtool -N).",
            None,
            MetricType::Counter,
            &samples,
        )
    }

    fn residence(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let unit = Unit::Seconds;
        let mut histograms = encoder.encode_descriptor(
            "rx_residence",
            "NIC residence: from a frame's arrival at the port to its publication in the \
             guest's used ring, per RX queue and class.",
            Some(&unit),
            MetricType::Histogram,
        )?;
        for port in &self.fabric.ports {
            for (index, queue) in port.nic.queues().iter().enumerate() {
                let classes = queue.residence_buckets(&RESIDENCE_BOUNDS_NS);
                for (class, buckets) in CLASSES.iter().zip(classes) {
                    let mut labels = queue_labels(&port.name, index);
                    labels.push(("class", class.to_string()));
                    let count = buckets.counts.iter().sum();
                    let upper = RESIDENCE_BOUNDS_NS
                        .iter()
                        .map(|&ns| ns as f64 / 1e9)
                        .chain([f64::INFINITY]);
                    let cut: Vec<(f64, u64)> = upper.zip(buckets.counts).collect();
                    histograms
                        .encode_family(&labels)?
                        .encode_histogram::<Vec<(&str, String)>>(
                            buckets.sum_ns as f64 / 1e9,
                            count,
                            &cut,
                            None,
                        )?;
                }
            }
        }
        Ok(())
    }
}

impl Collector for FabricCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.queue_counters(&mut encoder)?;
        self.port_counters(&mut encoder)?;
        self.netem(&mut encoder)?;
        self.switch_counters(&mut encoder)?;
        self.port_state(&mut encoder)?;
        self.queue_state(&mut encoder)?;
        self.rule_hits(&mut encoder)?;
        self.residence(&mut encoder)
    }
}
