//! The LL-HLS media playlist (RFC 8216bis): segments with their parts,
//! `EXT-X-PART-INF`, `EXT-X-SERVER-CONTROL` (blocking reload, part hold
//! back), a preload hint for the next part, and `EXT-X-PROGRAM-DATE-TIME`
//! (ingest wall clock) so players and tests can measure latency. Plain
//! HLS clients ignore the LL tags and play the complete segments. Pure.
//!
//! URIs are relative to `/{app}/{stream}/index.m3u8`: `init{v}.mp4`,
//! `seg{msn}.m4s` (a whole segment), `seg{msn}.{part}.m4s` (one part).

use super::segmenter::Segmenter;
use std::fmt::Write;

/// Parts are listed for segments this close to the live edge (RFC 8216bis
/// asks for at least the last three target durations).
const PART_SEGMENTS: usize = 4;

fn secs(ms: i64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// ISO 8601 UTC of epoch milliseconds.
pub fn iso8601(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The playlist, `None` until the first part exists.
pub fn render(s: &Segmenter) -> Option<String> {
    let segs = s.segments();
    let first = segs.front()?;
    if segs.iter().all(|g| g.parts.is_empty()) {
        return None;
    }
    let cfg = s.config();
    let longest = segs
        .iter()
        .filter(|g| g.complete)
        .map(|g| g.duration_ms())
        .max()
        .unwrap_or(cfg.min_segment_ms)
        .max(cfg.min_segment_ms);
    let target = (longest + 999) / 1000;
    let part_target = cfg.part_target_ms;
    let mut out = String::with_capacity(2048);
    let _ = writeln!(out, "#EXTM3U");
    let _ = writeln!(out, "#EXT-X-VERSION:9");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
    let _ = writeln!(
        out,
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={}",
        secs(3 * part_target)
    );
    let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={}", secs(part_target));
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", first.msn);
    let mut map = None;
    let with_parts_from = segs.len().saturating_sub(PART_SEGMENTS);
    for (i, g) in segs.iter().enumerate() {
        if g.parts.is_empty() && g.complete {
            continue;
        }
        if map != Some(g.init) {
            let _ = writeln!(out, "#EXT-X-MAP:URI=\"init{}.mp4\"", g.init);
            map = Some(g.init);
        }
        let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", iso8601(g.wall_ms));
        if i >= with_parts_from {
            for (p, part) in g.parts.iter().enumerate() {
                let _ = write!(
                    out,
                    "#EXT-X-PART:DURATION={},URI=\"seg{}.{p}.m4s\"",
                    secs(part.duration_ms),
                    g.msn
                );
                if part.independent {
                    out.push_str(",INDEPENDENT=YES");
                }
                out.push('\n');
            }
        }
        if g.complete {
            let _ = writeln!(out, "#EXTINF:{},", secs(g.duration_ms()));
            let _ = writeln!(out, "seg{}.m4s", g.msn);
        } else {
            let _ = writeln!(
                out,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg{}.{}.m4s\"",
                g.msn,
                g.parts.len()
            );
        }
    }
    Some(out)
}

/// The multivariant playlist of a stream (`/{app}/{stream}/master.m3u8`):
/// one variant, the media playlist, at `bandwidth_bps`. With a steering
/// server (`steering`: the scheduler's base URL) it carries
/// `EXT-X-CONTENT-STEERING` with this node as the one pathway
/// (`PATHWAY-ID`), which the steering manifest clones onto other edges
/// (RFC 8216bis §7; the scheduler's `/v1/steering`). `node` must be a
/// valid pathway id (node ids are).
pub fn multivariant(
    key: &str,
    node: &str,
    bandwidth_bps: u64,
    steering: Option<&str>,
    location: Option<(f64, f64)>,
) -> String {
    let mut out = String::with_capacity(512);
    let _ = writeln!(out, "#EXTM3U");
    let _ = writeln!(out, "#EXT-X-VERSION:9");
    let _ = writeln!(out, "#EXT-X-INDEPENDENT-SEGMENTS");
    // The viewer's location rides along (the agent groups CMCD by it; the
    // steering server ranks edges by it).
    let at = location
        .map(|(lat, lon)| format!("lat={lat:.4}&lon={lon:.4}"))
        .unwrap_or_default();
    let pathway = match steering {
        Some(base) => {
            let mut uri = format!("{base}/v1/steering/{key}?base={node}");
            if !at.is_empty() {
                let _ = write!(uri, "&{at}");
            }
            let _ = writeln!(
                out,
                "#EXT-X-CONTENT-STEERING:SERVER-URI=\"{uri}\",PATHWAY-ID=\"{node}\""
            );
            format!(",PATHWAY-ID=\"{node}\"")
        }
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "#EXT-X-STREAM-INF:BANDWIDTH={}{pathway}",
        bandwidth_bps.max(1)
    );
    if at.is_empty() {
        let _ = writeln!(out, "index.m3u8");
    } else {
        let _ = writeln!(out, "index.m3u8?{at}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multivariant_names_the_steering_server() {
        let m = multivariant(
            "live/a",
            "par-1",
            2_500_000,
            Some("http://sched:7480"),
            Some((48.85, 2.35)),
        );
        assert!(m.contains(
            "#EXT-X-CONTENT-STEERING:SERVER-URI=\"http://sched:7480/v1/steering/live/a?base=par-1&lat=48.8500&lon=2.3500\",PATHWAY-ID=\"par-1\""
        ));
        assert!(m.contains(
            "#EXT-X-STREAM-INF:BANDWIDTH=2500000,PATHWAY-ID=\"par-1\"\nindex.m3u8?lat=48.8500&lon=2.3500\n"
        ));
        let plain = multivariant("live/a", "par-1", 0, None, None);
        assert!(!plain.contains("STEERING") && !plain.contains("PATHWAY"));
        assert!(plain.contains("BANDWIDTH=1\n"));
    }

    #[test]
    fn dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_796_601_600_123), "2026-12-07T00:00:00.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
