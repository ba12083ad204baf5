//! What one TCP connection can carry over a path: the Padhye et al. model
//! ("Modeling TCP Reno performance", ToN 2000), the QoE formula's
//! throughput term where no delivery rate was measured.
//!
//! ```text
//! B(p) = min( W/RTT,  MSS / ( RTT·√(2bp/3) + T₀·min(1, 3·√(3bp/8))·p·(1 + 32p²) ) )
//! ```
//!
//! with `b` = 2 packets per ACK (delayed ACKs), `T₀` = the retransmission
//! timeout (Linux: `max(200 ms, RTT + 4·rttvar)`, here `max(200 ms, 2·RTT)`),
//! MSS 1448 B (1500 B Ethernet minus IP/TCP headers and timestamps) and `W`
//! the largest receive window Linux autotunes to by default (6 MiB,
//! `tcp_rmem` max), which bounds a loss-free path. Pure.

/// Bytes of payload per segment.
pub const MSS_BYTES: f64 = 1448.0;
/// Largest receive window, bytes (Linux `net.ipv4.tcp_rmem` max default).
pub const MAX_WINDOW_BYTES: f64 = 6.0 * 1024.0 * 1024.0;
/// Packets acknowledged per ACK (delayed ACKs).
const B: f64 = 2.0;
/// Minimum retransmission timeout, s (Linux `TCP_RTO_MIN`).
const RTO_MIN_S: f64 = 0.2;

/// Throughput of one TCP connection over a path with round-trip time
/// `rtt_ms` and loss ratio `loss`, Mbps. NaN or negative inputs count as
/// the worst case (0 Mbps).
pub fn padhye_mbps(rtt_ms: f64, loss: f64) -> f64 {
    if !(rtt_ms.is_finite() && loss.is_finite()) || rtt_ms < 0.0 || loss < 0.0 {
        return 0.0;
    }
    let rtt = (rtt_ms / 1000.0).max(1e-4);
    let window_bps = MAX_WINDOW_BYTES * 8.0 / rtt;
    let p = loss.min(1.0);
    if p <= 0.0 {
        return window_bps / 1e6;
    }
    let t0 = RTO_MIN_S.max(2.0 * rtt);
    let denom = rtt * (2.0 * B * p / 3.0).sqrt()
        + t0 * (3.0 * (3.0 * B * p / 8.0).sqrt()).min(1.0) * p * (1.0 + 32.0 * p * p);
    (MSS_BYTES * 8.0 / denom).min(window_bps) / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_with_rtt_and_loss() {
        assert!(padhye_mbps(20.0, 0.001) > padhye_mbps(200.0, 0.001));
        assert!(padhye_mbps(50.0, 0.0001) > padhye_mbps(50.0, 0.01));
        // 100 ms, 1 % loss: about 1 Mbps (Mathis' 1.4 Mbps less timeouts).
        let x = padhye_mbps(100.0, 0.01);
        assert!((0.7..1.4).contains(&x), "{x}");
        // No loss: the receive window over the RTT.
        let w = padhye_mbps(100.0, 0.0);
        assert!((w - MAX_WINDOW_BYTES * 8.0 / 0.1 / 1e6).abs() < 1e-6);
        assert_eq!(padhye_mbps(f64::NAN, 0.01), 0.0);
        assert_eq!(padhye_mbps(50.0, -1.0), 0.0);
    }
}
