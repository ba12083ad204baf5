//! Client groups (DESIGN §4): viewers are aggregated per geohash cell
//! (default precision 4, about 39 km × 20 km) and, when known, per ASN.
//!
//! The label of a group — what goes into `GroupQoe.group` and
//! `GroupRedirect.group` — is the geohash (`"u09t"`), followed by
//! `"/as<ASN>"` when the ASN is known (`"u09t/as3215"`); `"unknown"` when
//! the viewer's location is unknown, `"other"` for viewers folded together
//! because an agent reached its group limit.

use std::fmt;
use std::str::FromStr;

/// Default geohash precision of a client group.
pub const DEFAULT_PRECISION: usize = 4;
/// Longest geohash accepted.
pub const MAX_PRECISION: usize = 12;

const BASE32: &[u8; 32] = b"0123456789bcdefghjkmnpqrstuvwxyz";

/// Geohash of a point with `precision` characters (clamped to 1..=12).
/// `None` for coordinates out of range or not finite.
pub fn geohash(lat: f64, lon: f64, precision: usize) -> Option<String> {
    // RangeInclusive::contains is false for NaN.
    if !((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)) {
        return None;
    }
    let precision = precision.clamp(1, MAX_PRECISION);
    let (mut lat_lo, mut lat_hi) = (-90.0f64, 90.0f64);
    let (mut lon_lo, mut lon_hi) = (-180.0f64, 180.0f64);
    let mut out = String::with_capacity(precision);
    let mut even = true; // bits alternate, longitude first
    let mut bits = 0usize;
    let mut ch = 0usize;
    while out.len() < precision {
        let (lo, hi, v) = if even {
            (&mut lon_lo, &mut lon_hi, lon)
        } else {
            (&mut lat_lo, &mut lat_hi, lat)
        };
        let mid = (*lo + *hi) / 2.0;
        ch <<= 1;
        if v >= mid {
            ch |= 1;
            *lo = mid;
        } else {
            *hi = mid;
        }
        even = !even;
        bits += 1;
        if bits == 5 {
            out.push(char::from(BASE32[ch]));
            bits = 0;
            ch = 0;
        }
    }
    Some(out)
}

/// Whether `s` is a geohash of 1..=12 characters.
pub fn is_geohash(s: &str) -> bool {
    (1..=MAX_PRECISION).contains(&s.len()) && s.bytes().all(|b| BASE32.contains(&b))
}

/// Where a group's viewers are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cell {
    Geohash(String),
    /// No location for these viewers.
    Unknown,
    /// Overflow bucket of an agent that reached its group limit.
    Other,
}

/// A client group: geohash cell and optional ASN.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub cell: Cell,
    pub asn: Option<u32>,
}

impl GroupKey {
    /// The group of a viewer at `lat`/`lon`; "unknown" when the coordinates
    /// are missing or out of range.
    pub fn locate(coord: Option<(f64, f64)>, precision: usize) -> GroupKey {
        let cell = coord
            .and_then(|(lat, lon)| geohash(lat, lon, precision))
            .map_or(Cell::Unknown, Cell::Geohash);
        GroupKey { cell, asn: None }
    }

    pub fn unknown() -> GroupKey {
        GroupKey {
            cell: Cell::Unknown,
            asn: None,
        }
    }

    pub fn other() -> GroupKey {
        GroupKey {
            cell: Cell::Other,
            asn: None,
        }
    }

    pub fn with_asn(mut self, asn: Option<u32>) -> GroupKey {
        self.asn = asn;
        self
    }
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cell {
            Cell::Geohash(g) => f.write_str(g)?,
            Cell::Unknown => f.write_str("unknown")?,
            Cell::Other => f.write_str("other")?,
        }
        match self.asn {
            Some(asn) => write!(f, "/as{asn}"),
            None => Ok(()),
        }
    }
}

/// A group label that is not `cell[/asN]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid client group {0:?}: want a geohash, \"unknown\" or \"other\", optionally followed by /as<ASN>"
)]
pub struct GroupParseError(pub String);

impl FromStr for GroupKey {
    type Err = GroupParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || GroupParseError(s.to_owned());
        let (cell, asn) = match s.split_once('/') {
            Some((cell, asn)) => {
                let n = asn
                    .strip_prefix("as")
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|n| n.parse::<u32>().ok())
                    .ok_or_else(bad)?;
                (cell, Some(n))
            }
            None => (s, None),
        };
        let cell = match cell {
            "unknown" => Cell::Unknown,
            "other" => Cell::Other,
            g if is_geohash(g) => Cell::Geohash(g.to_owned()),
            _ => return Err(bad()),
        };
        Ok(GroupKey { cell, asn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_geohashes() {
        // Reference points from the original geohash.org examples.
        assert_eq!(
            geohash(57.64911, 10.40744, 11).as_deref(),
            Some("u4pruydqqvj")
        );
        assert_eq!(geohash(42.6, -5.6, 5).as_deref(), Some("ezs42"));
        assert_eq!(geohash(48.8566, 2.3522, 4).as_deref(), Some("u09t"));
        assert_eq!(geohash(-33.8688, 151.2093, 4).as_deref(), Some("r3gx"));
        assert_eq!(geohash(0.0, 0.0, 1).as_deref(), Some("s"));
        assert_eq!(geohash(90.0, 180.0, 2).as_deref(), Some("zz"));
        assert_eq!(geohash(-90.0, -180.0, 2).as_deref(), Some("00"));
        assert_eq!(geohash(91.0, 0.0, 4), None);
        assert_eq!(geohash(0.0, f64::NAN, 4), None);
        assert_eq!(geohash(0.0, 0.0, 99).map(|g| g.len()), Some(MAX_PRECISION));
        assert_eq!(geohash(0.0, 0.0, 0).map(|g| g.len()), Some(1));
    }

    #[test]
    fn group_labels() {
        let paris = GroupKey::locate(Some((48.8566, 2.3522)), DEFAULT_PRECISION);
        assert_eq!(paris.to_string(), "u09t");
        assert_eq!(
            paris.clone().with_asn(Some(3215)).to_string(),
            "u09t/as3215"
        );
        assert_eq!(GroupKey::locate(None, 4).to_string(), "unknown");
        assert_eq!(GroupKey::locate(Some((100.0, 0.0)), 4), GroupKey::unknown());
        assert_eq!(GroupKey::other().to_string(), "other");
        assert_eq!("u09t".parse::<GroupKey>().unwrap(), paris);
        assert_eq!(
            "unknown/as7".parse::<GroupKey>().unwrap(),
            GroupKey::unknown().with_asn(Some(7))
        );
        for bad in [
            "",
            "U09T",
            "u09a",
            "u09t/",
            "u09t/as",
            "u09t/7",
            "a/as1",
            "u09t/as-1",
        ] {
            assert!(bad.parse::<GroupKey>().is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn geohash_prefixes_nest_and_labels_round_trip(
            lat in -90.0f64..=90.0, lon in -180.0f64..=180.0, p in 1usize..=12, asn in proptest::option::of(any::<u32>())
        ) {
            let long = geohash(lat, lon, 12).unwrap();
            let short = geohash(lat, lon, p).unwrap();
            prop_assert!(long.starts_with(&short));
            let key = GroupKey::locate(Some((lat, lon)), p).with_asn(asn);
            prop_assert_eq!(key.to_string().parse::<GroupKey>().unwrap(), key);
        }
    }
}
