//! Where things are: coordinates, great-circle distance, and the model that
//! turns distance into an expected RTT where nothing was measured.
//!
//! The RTT model is a least-squares line fitted to the WonderNetwork global
//! ping matrix (2020-07-19, 60,128 directed city pairs with known
//! coordinates): `avg_rtt_ms = 25.98 + 0.01710 · km` (R² = 0.72). The slope is
//! 1.7× the speed-of-light-in-fibre bound (1 ms per 100 km) — typical route
//! inflation — and the intercept is access and queueing delay. See
//! `docs/qoe.md`.

use geo::{Distance, Haversine, Point};
use serde::{Deserialize, Serialize};

/// Intercept of the fitted RTT model, milliseconds.
pub const RTT_MODEL_BASE_MS: f64 = 25.98;
/// Slope of the fitted RTT model, milliseconds per kilometre.
pub const RTT_MODEL_MS_PER_KM: f64 = 0.01710;

/// A point on Earth in degrees (WGS84).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Coord {
    pub lat: f64,
    pub lon: f64,
}

impl Coord {
    /// Validated constructor: finite, |lat| ≤ 90, |lon| ≤ 180.
    pub fn new(lat: f64, lon: f64) -> Option<Self> {
        let ok = lat.is_finite()
            && lon.is_finite()
            && (-90.0..=90.0).contains(&lat)
            && (-180.0..=180.0).contains(&lon);
        ok.then_some(Self { lat, lon })
    }

    /// Great-circle distance in kilometres.
    pub fn km_to(&self, other: &Coord) -> f64 {
        let a = Point::new(self.lon, self.lat);
        let b = Point::new(other.lon, other.lat);
        Haversine.distance(a, b) / 1000.0
    }

    /// The point on a sphere of the Earth's mean radius, in km (x, y, z):
    /// nearest neighbours by chord length are nearest by great-circle
    /// distance, so R-trees over these points answer "nearest nodes".
    pub fn sphere_point(&self) -> [f64; 3] {
        const R: f64 = 6371.0;
        let (lat, lon) = (self.lat.to_radians(), self.lon.to_radians());
        [
            R * lat.cos() * lon.cos(),
            R * lat.cos() * lon.sin(),
            R * lat.sin(),
        ]
    }
}

/// Expected round-trip time between two places `km` apart.
pub fn modelled_rtt_ms(km: f64) -> f64 {
    RTT_MODEL_BASE_MS + RTT_MODEL_MS_PER_KM * km.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paris_tokyo_distance_and_rtt() {
        let paris = Coord::new(48.8566, 2.3522).unwrap();
        let tokyo = Coord::new(35.6762, 139.6503).unwrap();
        let km = paris.km_to(&tokyo);
        assert!((km - 9_712.0).abs() < 30.0, "{km}");
        let rtt = modelled_rtt_ms(km);
        assert!(rtt > 150.0 && rtt < 250.0, "{rtt}");
        assert!(Coord::new(91.0, 0.0).is_none());
        assert!(Coord::new(f64::NAN, 0.0).is_none());
    }
}
