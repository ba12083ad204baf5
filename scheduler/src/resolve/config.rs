//! `[resolve]` settings of the scheduler config.

use super::rank::RankParams;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use vantage_shared::group::MAX_PRECISION;

/// `[resolve]` in the scheduler config. Defaults in `docs/viewer-routing.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResolveConfig {
    /// MaxMind City database (client IP → location).
    pub geoip_city: Option<PathBuf>,
    /// MaxMind ASN database (client IP → autonomous system).
    pub geoip_asn: Option<PathBuf>,
    /// Trusted header set by a front proxy with the client's `lat,lon`.
    pub location_header: Option<String>,
    /// Trusted header set by a front proxy with the client IP (first of a
    /// comma-separated list, as in `X-Forwarded-For`).
    pub client_ip_header: Option<String>,
    /// Geohash characters of a client group (agents group at 4).
    pub group_precision: usize,
    /// Nearest up nodes scored per resolve (plus those with group data).
    pub nearest_candidates: usize,
    /// Edges in a `/v1/resolve` answer without `n`, and the most `n` may ask.
    pub default_n: usize,
    pub max_n: usize,
    /// `Retry-After` of a 503 when no edge is eligible, seconds.
    pub retry_after_s: u32,
    /// Node snapshot age after which the liveness loop rebuilds it, ms.
    pub refresh_ms: i64,
    /// See [`RankParams`].
    pub min_group_samples: f64,
    pub group_half_life_ms: i64,
    pub spread_band: f64,
    pub exploration_share: f64,
    pub explore_candidates: usize,
    pub explore_max_gap: f64,
    pub trend_horizon_ms: i64,
    pub admission_lag_ms: i64,
}

impl Default for ResolveConfig {
    fn default() -> Self {
        let p = RankParams::default();
        Self {
            geoip_city: None,
            geoip_asn: None,
            location_header: None,
            client_ip_header: None,
            group_precision: vantage_shared::group::DEFAULT_PRECISION,
            nearest_candidates: 16,
            default_n: 3,
            max_n: 20,
            retry_after_s: 5,
            refresh_ms: 1000,
            min_group_samples: p.min_group_samples,
            group_half_life_ms: p.group_half_life_ms,
            spread_band: p.spread_band,
            exploration_share: p.exploration_share,
            explore_candidates: p.explore_candidates,
            explore_max_gap: p.explore_max_gap,
            trend_horizon_ms: p.trend_horizon_ms,
            admission_lag_ms: p.admission_lag_ms,
        }
    }
}

impl ResolveConfig {
    pub fn params(&self) -> RankParams {
        RankParams {
            min_group_samples: self.min_group_samples,
            group_half_life_ms: self.group_half_life_ms,
            spread_band: self.spread_band,
            exploration_share: self.exploration_share,
            explore_candidates: self.explore_candidates,
            explore_max_gap: self.explore_max_gap,
            trend_horizon_ms: self.trend_horizon_ms,
            admission_lag_ms: self.admission_lag_ms,
        }
    }

    /// Checks ranges; returns the offending key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.params().validate().map_err(|e| (e.0, e.to_string()))?;
        if !(1..=MAX_PRECISION).contains(&self.group_precision) {
            return Err(("group_precision", format!("must be 1..={MAX_PRECISION}")));
        }
        if self.nearest_candidates == 0 {
            return Err(("nearest_candidates", "must be ≥ 1".into()));
        }
        if self.default_n == 0 || self.max_n < self.default_n {
            return Err(("max_n", "need 1 ≤ default_n ≤ max_n".into()));
        }
        if self.refresh_ms <= 0 {
            return Err(("refresh_ms", "must be > 0".into()));
        }
        for (key, h) in [
            ("location_header", &self.location_header),
            ("client_ip_header", &self.client_ip_header),
        ] {
            if let Some(h) = h
                && axum::http::HeaderName::from_bytes(h.as_bytes()).is_err()
            {
                return Err((key, format!("{h:?} is not a valid header name")));
            }
        }
        Ok(())
    }
}
