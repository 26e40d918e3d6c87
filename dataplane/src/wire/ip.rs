//! IP protocol numbers (IANA "Assigned Internet Protocol Numbers").

/// An IP protocol number, as carried in the IPv4 `protocol` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Protocol(pub u8);

impl Protocol {
    /// ICMP for IPv4.
    pub const ICMP: Protocol = Protocol(1);
    /// TCP.
    pub const TCP: Protocol = Protocol(6);
    /// UDP.
    pub const UDP: Protocol = Protocol(17);
    /// IPsec Encapsulating Security Payload (RFC 4303).
    pub const ESP: Protocol = Protocol(50);
}

/// The same numbers as plain `u8` constants, for `match` arms over raw protocol bytes (flow keys
/// store the byte).
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = super::Protocol::ICMP.0;
    /// TCP.
    pub const TCP: u8 = super::Protocol::TCP.0;
    /// UDP.
    pub const UDP: u8 = super::Protocol::UDP.0;
    /// ESP.
    pub const ESP: u8 = super::Protocol::ESP.0;
}
