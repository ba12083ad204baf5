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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_796_601_600_123), "2026-12-07T00:00:00.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
