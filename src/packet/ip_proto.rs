//! IP protocol numbers (IPv4's protocol field, IPv6's next header) that prism-vnic names,
//! from IANA's registry: one definition for the parsers, the classifier's rules, the
//! offloads and the wire ports' flow hash.

pub const ICMP: u8 = 1;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMPV6: u8 = 58;
pub const SCTP: u8 = 132;
