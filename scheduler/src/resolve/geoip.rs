//! Client location and ASN from MaxMind databases (GeoIP2/GeoLite2 City and
//! ASN, or any database with the same fields). Both are optional; a lookup
//! that finds nothing is `None`, never an error.

use maxminddb::{Reader, path};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use vantage_shared::place::Coord;

#[derive(Debug, thiserror::Error)]
#[error("GeoIP database {path}: {source}")]
pub struct GeoIpError {
    pub path: PathBuf,
    #[source]
    pub source: maxminddb::MaxMindDbError,
}

/// The configured databases.
#[derive(Default)]
pub struct GeoIp {
    city: Option<Reader<Vec<u8>>>,
    asn: Option<Reader<Vec<u8>>>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp")
            .field("city", &self.city.is_some())
            .field("asn", &self.asn.is_some())
            .finish()
    }
}

fn open(path: &Path) -> Result<Reader<Vec<u8>>, GeoIpError> {
    Reader::open_readfile(path).map_err(|source| GeoIpError {
        path: path.to_owned(),
        source,
    })
}

impl GeoIp {
    /// Opens the databases that are configured (read into memory once).
    pub fn open(city: Option<&Path>, asn: Option<&Path>) -> Result<Self, GeoIpError> {
        Ok(Self {
            city: city.map(open).transpose()?,
            asn: asn.map(open).transpose()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.city.is_none() && self.asn.is_none()
    }

    pub fn has_city(&self) -> bool {
        self.city.is_some()
    }

    /// Location of `ip` from the City database.
    pub fn locate(&self, ip: IpAddr) -> Option<Coord> {
        let r = self.city.as_ref()?.lookup(ip).ok()?;
        let lat: f64 = r
            .decode_path(&path!["location", "latitude"])
            .ok()
            .flatten()?;
        let lon: f64 = r
            .decode_path(&path!["location", "longitude"])
            .ok()
            .flatten()?;
        Coord::new(lat, lon)
    }

    /// Autonomous system of `ip` from the ASN database.
    pub fn asn(&self, ip: IpAddr) -> Option<u32> {
        let r = self.asn.as_ref()?.lookup(ip).ok()?;
        r.decode_path(&path!["autonomous_system_number"])
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/geoip")
            .join(name)
    }

    #[test]
    fn resolve_geoip_test_databases() {
        let g = GeoIp::open(
            Some(&data("GeoLite2-City-Test.mmdb")),
            Some(&data("GeoLite2-ASN-Test.mmdb")),
        )
        .unwrap();
        let london = g.locate("81.2.69.142".parse().unwrap()).unwrap();
        assert!(
            (london.lat - 51.5).abs() < 0.5 && london.lon.abs() < 0.5,
            "{london:?}"
        );
        assert_eq!(g.asn("89.160.20.112".parse().unwrap()), Some(29518));
        assert_eq!(g.locate("127.0.0.1".parse().unwrap()), None);
        assert_eq!(g.asn("127.0.0.1".parse().unwrap()), None);
        let none = GeoIp::default();
        assert!(none.is_empty());
        assert_eq!(none.locate("81.2.69.142".parse().unwrap()), None);
        assert!(GeoIp::open(Some(Path::new("/nonexistent.mmdb")), None).is_err());
    }
}
