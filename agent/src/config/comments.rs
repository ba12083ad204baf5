//! The live comment settings of [`Settings`] (`comments_*` keys), defaults
//! applied and ranges checked.

use super::{ConfigError, Settings, invalid};
use crate::comments::CommentsConfig;
use std::ops::RangeInclusive;
use std::time::Duration;

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    name: &str,
    v: T,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError> {
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(invalid(format!(
            "--{name} {v} is outside {}..={}",
            range.start(),
            range.end()
        )))
    }
}

fn ms(
    name: &str,
    v: Option<u64>,
    range: RangeInclusive<u64>,
    d: &mut Duration,
) -> Result<(), ConfigError> {
    if let Some(v) = v {
        *d = Duration::from_millis(in_range(name, v, range)?);
    }
    Ok(())
}

impl Settings {
    /// Defaults of [`CommentsConfig`] with the `comments_*` keys applied.
    pub(super) fn comments_settings(&self) -> Result<CommentsConfig, ConfigError> {
        let mut c = CommentsConfig::default();
        ms(
            "comments-heartbeat-ms",
            self.comments_heartbeat_ms,
            1000..=300_000,
            &mut c.heartbeat,
        )?;
        ms(
            "comments-idle-timeout-ms",
            self.comments_idle_timeout_ms,
            1000..=600_000,
            &mut c.idle_timeout,
        )?;
        if c.idle_timeout <= c.heartbeat {
            return Err(invalid(format!(
                "--comments-idle-timeout-ms ({} ms) must be longer than --comments-heartbeat-ms ({} ms)",
                c.idle_timeout.as_millis(),
                c.heartbeat.as_millis()
            )));
        }
        ms(
            "comments-coalesce-ms",
            self.comments_coalesce_ms,
            0..=1000,
            &mut c.coalesce,
        )?;
        if let Some(n) = self.comments_buffer {
            c.buffer = in_range("comments-buffer", n, 16..=1_000_000)?;
        }
        if let Some(n) = self.comments_max_text_bytes {
            c.max_text_bytes = in_range("comments-max-text-bytes", n, 1..=4096)?;
        }
        if let Some(r) = self.comments_client_rate {
            c.client_rate.per_s = in_range("comments-client-rate", r, 0.01..=1000.0)?;
        }
        if let Some(b) = self.comments_client_burst {
            c.client_rate.burst = f64::from(in_range("comments-client-burst", b, 1..=10_000)?);
        }
        if let Some(r) = self.comments_room_rate {
            c.room_rate.per_s = in_range("comments-room-rate", r, 0.1..=100_000.0)?;
        }
        if let Some(b) = self.comments_room_burst {
            c.room_rate.burst = f64::from(in_range("comments-room-burst", b, 1..=1_000_000)?);
        }
        if let Some(n) = self.comments_max_connections {
            c.max_connections = in_range("comments-max-connections", n, 1..=10_000_000)?;
        }
        if let Some(n) = self.comments_fanout_capacity {
            c.fanout_capacity_per_s = in_range("comments-fanout-capacity", n, 1e3..=1e9)?;
        }
        if let Some(n) = self.comments_queue_bytes {
            c.queue_bytes = in_range("comments-queue-bytes", n, 4096..=64 << 20)?;
        }
        ms(
            "comments-write-timeout-ms",
            self.comments_write_timeout_ms,
            100..=600_000,
            &mut c.write_timeout,
        )?;
        ms(
            "comments-stall-timeout-ms",
            self.comments_stall_timeout_ms,
            1500..=60_000,
            &mut c.stall_timeout,
        )?;
        ms(
            "comments-handshake-timeout-ms",
            self.comments_handshake_timeout_ms,
            100..=60_000,
            &mut c.handshake_timeout,
        )?;
        Ok(c)
    }
}
