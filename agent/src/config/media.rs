//! The media settings of [`Settings`]: the relay's `relay_*` keys and the
//! RTMP listener's `rtmp_*` keys, defaults applied and ranges checked.

use super::{ConfigError, Settings, invalid};
use crate::relay::RelayConfig;
use crate::rtmp::RtmpConfig;
use std::ops::RangeInclusive;
use std::time::Duration;

/// `v` in milliseconds into `d` when given and within `range`.
fn ms(
    name: &str,
    v: Option<u64>,
    range: RangeInclusive<u64>,
    d: &mut Duration,
) -> Result<(), ConfigError> {
    if let Some(v) = v {
        check(name, v, range)?;
        *d = Duration::from_millis(v);
    }
    Ok(())
}

fn check(name: &str, v: u64, range: RangeInclusive<u64>) -> Result<(), ConfigError> {
    if range.contains(&v) {
        Ok(())
    } else {
        Err(invalid(format!(
            "--{name} {v} is outside {}..={}",
            range.start(),
            range.end()
        )))
    }
}

impl Settings {
    /// The relay's settings: defaults of [`RelayConfig`] with the `relay_*`
    /// keys applied and range-checked.
    pub(super) fn relay_settings(&self) -> Result<RelayConfig, ConfigError> {
        let mut r = RelayConfig::default();
        ms(
            "relay-max-lag-ms",
            self.relay_max_lag_ms,
            100..=60_000,
            &mut r.max_lag,
        )?;
        ms(
            "relay-stall-timeout-ms",
            self.relay_stall_timeout_ms,
            100..=60_000,
            &mut r.stall_timeout,
        )?;
        ms(
            "relay-idle-timeout-ms",
            self.relay_idle_timeout_ms,
            100..=86_400_000,
            &mut r.idle_timeout,
        )?;
        ms(
            "relay-directory-linger-ms",
            self.relay_directory_linger_ms,
            1_000..=86_400_000,
            &mut r.directory_linger,
        )?;
        ms(
            "relay-write-coalesce-ms",
            self.relay_write_coalesce_ms,
            0..=500,
            &mut r.write_coalesce,
        )?;
        if let Some(n) = self.relay_overflow_disconnect {
            if n == 0 {
                return Err(invalid("--relay-overflow-disconnect must be at least 1"));
            }
            r.overflow_limit = n;
        }
        if let Some(b) = self.relay_cache_max_bytes {
            if b < 64 * 1024 {
                return Err(invalid(format!(
                    "--relay-cache-max-bytes {b} is below 65536"
                )));
            }
            r.cache_max_bytes = usize::try_from(b).unwrap_or(usize::MAX);
        }
        if let Some(n) = self.relay_max_pending {
            check("relay-max-pending", n as u64, 16..=1_000_000)?;
            r.max_pending = n;
        }
        if let Some(x) = self.cmcd_beacon_rate {
            if !(0.01..=10_000.0).contains(&x) {
                return Err(invalid(format!(
                    "--cmcd-beacon-rate {x} is outside 0.01..=10000"
                )));
            }
            r.cmcd_beacon_rate = x;
        }
        if let Some(n) = self.cmcd_beacon_burst {
            check("cmcd-beacon-burst", u64::from(n), 1..=100_000)?;
            r.cmcd_beacon_burst = f64::from(n);
        }
        if let Some(n) = self.cmcd_client_prefix_v4 {
            check("cmcd-client-prefix-v4", u64::from(n), 8..=32)?;
            r.cmcd_client_prefix_v4 = n;
        }
        if let Some(n) = self.cmcd_client_prefix_v6 {
            check("cmcd-client-prefix-v6", u64::from(n), 16..=128)?;
            r.cmcd_client_prefix_v6 = n;
        }
        if let Some(n) = self.cmcd_sessions_per_client {
            check("cmcd-sessions-per-client", n as u64, 1..=100_000)?;
            r.cmcd_sessions_per_client = n;
        }
        if let Some(n) = self.cmcd_max_sessions {
            check("cmcd-max-sessions", n as u64, 1_000..=10_000_000)?;
            r.cmcd_max_sessions = n;
        }
        ms(
            "hls-part-target-ms",
            self.hls_part_target_ms,
            100..=2000,
            &mut r.hls_part_target,
        )?;
        if let Some(n) = self.hls_window_segments {
            check("hls-window-segments", n as u64, 3..=60)?;
            r.hls_window = n;
        }
        if let Some(u) = &self.steering_url {
            let u = u.trim_end_matches('/');
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && u.len() <= 512
                && !u.contains(['"', ' ', '?', '#', '\n', '\r']);
            if !ok {
                return Err(invalid(format!(
                    "--steering-url {u:?} must be an http(s) URL without query, quotes or spaces"
                )));
            }
            r.steering_url = Some(u.to_owned());
        }
        Ok(r)
    }

    /// The RTMP listener's settings: defaults of [`RtmpConfig`] with the
    /// `rtmp_*` keys applied and range-checked.
    pub(super) fn rtmp_settings(&self) -> Result<RtmpConfig, ConfigError> {
        let mut r = RtmpConfig::default();
        if let Some(n) = self.rtmp_max_connections {
            check("rtmp-max-connections", n as u64, 1..=100_000)?;
            r.max_connections = n;
        }
        ms(
            "rtmp-handshake-timeout-ms",
            self.rtmp_handshake_timeout_ms,
            100..=60_000,
            &mut r.handshake_timeout,
        )?;
        ms(
            "rtmp-idle-timeout-ms",
            self.rtmp_idle_timeout_ms,
            100..=600_000,
            &mut r.idle_timeout,
        )?;
        if let Some(n) = self.rtmp_max_chunk_size {
            check("rtmp-max-chunk-size", u64::from(n), 128..=16_777_216)?;
            r.max_chunk_size = n;
        }
        if let Some(n) = self.rtmp_max_message_bytes {
            check("rtmp-max-message-bytes", u64::from(n), 65_536..=16_777_215)?;
            r.max_message_bytes = n;
        }
        Ok(r)
    }
}
