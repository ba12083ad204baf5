//! QUIC application error codes used when the scheduler closes a telemetry
//! connection, and their metric labels. Every rejection has its own code so
//! an agent (and an operator reading logs) knows what went wrong.

use vantage_proto::v1::RejectReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CloseCode {
    /// Orderly close (agent shutdown, scheduler shutdown).
    Normal = 0x00,
    BadToken = 0x10,
    UnknownNode = 0x11,
    DuplicateNode = 0x12,
    VersionUnsupported = 0x13,
    IdentityMismatch = 0x14,
    InvalidHello = 0x15,
    FrameTooLarge = 0x20,
    Undecodable = 0x21,
    InvalidValue = 0x22,
    ProtocolViolation = 0x23,
    HelloTimeout = 0x24,
    /// No report for 3 report intervals: the node is down; reconnect.
    ReportTimeout = 0x25,
    ShuttingDown = 0x30,
    /// A newer session of the same node replaced this one.
    Superseded = 0x31,
}

impl CloseCode {
    pub const ALL: [CloseCode; 15] = [
        CloseCode::Normal,
        CloseCode::BadToken,
        CloseCode::UnknownNode,
        CloseCode::DuplicateNode,
        CloseCode::VersionUnsupported,
        CloseCode::IdentityMismatch,
        CloseCode::InvalidHello,
        CloseCode::FrameTooLarge,
        CloseCode::Undecodable,
        CloseCode::InvalidValue,
        CloseCode::ProtocolViolation,
        CloseCode::HelloTimeout,
        CloseCode::ReportTimeout,
        CloseCode::ShuttingDown,
        CloseCode::Superseded,
    ];

    pub fn code(self) -> u32 {
        self as u32
    }

    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| u64::from(c.code()) == code)
    }

    /// Snake-case label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::BadToken => "bad_token",
            CloseCode::UnknownNode => "unknown_node",
            CloseCode::DuplicateNode => "duplicate_node",
            CloseCode::VersionUnsupported => "version_unsupported",
            CloseCode::IdentityMismatch => "identity_mismatch",
            CloseCode::InvalidHello => "invalid_hello",
            CloseCode::FrameTooLarge => "frame_too_large",
            CloseCode::Undecodable => "undecodable",
            CloseCode::InvalidValue => "invalid_value",
            CloseCode::ProtocolViolation => "protocol_violation",
            CloseCode::HelloTimeout => "hello_timeout",
            CloseCode::ReportTimeout => "report_timeout",
            CloseCode::ShuttingDown => "shutting_down",
            CloseCode::Superseded => "superseded",
        }
    }

    /// Whether an agent should retry after this close. Rejections of its
    /// identity or credentials will not heal by retrying quickly; the agent
    /// still retries, at the backoff cap, so a fixed configuration recovers.
    pub fn is_retryable(self) -> bool {
        !matches!(
            self,
            CloseCode::BadToken
                | CloseCode::IdentityMismatch
                | CloseCode::VersionUnsupported
                | CloseCode::DuplicateNode
        )
    }

    pub fn from_reject(reason: RejectReason) -> Self {
        match reason {
            RejectReason::BadToken => CloseCode::BadToken,
            RejectReason::UnknownNode => CloseCode::UnknownNode,
            RejectReason::DuplicateNode => CloseCode::DuplicateNode,
            RejectReason::VersionUnsupported => CloseCode::VersionUnsupported,
            RejectReason::IdentityMismatch => CloseCode::IdentityMismatch,
            RejectReason::InvalidHello | RejectReason::Unspecified => CloseCode::InvalidHello,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for c in CloseCode::ALL {
            assert!(seen.insert(c.code()));
            assert_eq!(CloseCode::from_code(u64::from(c.code())), Some(c));
        }
        assert_eq!(CloseCode::from_code(0xdead), None);
    }
}
