//! Fitting a report into the telemetry frame limit whatever the agent's
//! local state (issue 17): hundreds of publishers with long keys used to
//! grow a report past the scheduler's frame limit, every report was
//! dropped and the scheduler marked the node down.
//!
//! [`fit`] keeps, within the byte budget, the path reports first (they
//! steer routing), then the streams the agent is the origin of, then the
//! other streams by viewers and bit rate, then the client groups by
//! viewers; what does not fit is left out and summed up in
//! [`Report::tail`] (counts, viewers and bit rate of the streams left
//! out). The totals in [`Report::load`] are untouched: they were counted
//! before trimming.

use prost::Message;
use std::cmp::Ordering;
use vantage_proto::v1::{Report, ReportTail, StreamRole, StreamState};

/// Bytes a frame needs around the report itself: the oneof field's tag
/// and length (at most 1 + 5 bytes), rounded up.
const FRAME_OVERHEAD: usize = 16;

/// What [`fit`] left out of a report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    pub streams: usize,
    pub groups: usize,
    pub paths: usize,
}

impl Trimmed {
    pub fn any(&self) -> bool {
        self.streams + self.groups + self.paths > 0
    }
}

/// Bytes an element of a repeated message field takes (tag, length, body).
fn field_len<M: Message>(m: &M) -> usize {
    let n = m.encoded_len();
    1 + prost::encoding::encoded_len_varint(n as u64) + n
}

/// Orders streams by how much they matter to the scheduler: origins first
/// (the directory is built from them), then by viewers, then by bit rate.
fn stream_rank(a: &StreamState, b: &StreamState) -> Ordering {
    let origin = |s: &StreamState| s.role == StreamRole::Origin as i32;
    origin(b)
        .cmp(&origin(a))
        .then(b.viewers.cmp(&a.viewers))
        .then(
            b.bitrate_kbps
                .partial_cmp(&a.bitrate_kbps)
                .unwrap_or(Ordering::Equal),
        )
        .then_with(|| a.key.cmp(&b.key))
}

/// How many of `items` (in order) fit in `budget` bytes; takes them off it.
fn prefix_fitting<M: Message>(items: &[M], budget: &mut usize) -> usize {
    let mut kept = 0;
    for m in items {
        let n = field_len(m);
        if n > *budget {
            break;
        }
        *budget -= n;
        kept += 1;
    }
    kept
}

/// Trims `report` so that a telemetry frame holding it is at most
/// `max_frame` bytes; returns what was left out (nothing when it fit).
pub fn fit(report: &mut Report, max_frame: usize) -> Trimmed {
    let limit = max_frame.saturating_sub(FRAME_OVERHEAD);
    if report.encoded_len() <= limit {
        return Trimmed::default();
    }
    let mut streams = std::mem::take(&mut report.streams);
    let mut groups = std::mem::take(&mut report.groups);
    let mut paths = std::mem::take(&mut report.paths);
    // The tail's own size, with the largest values it can hold.
    report.tail = Some(ReportTail {
        streams: u32::MAX,
        groups: u32::MAX,
        paths: u32::MAX,
        viewers: u32::MAX,
        bitrate_kbps: f64::MAX,
    });
    let mut budget = limit.saturating_sub(report.encoded_len());
    streams.sort_by(stream_rank);
    groups.sort_by(|a, b| {
        b.viewers
            .cmp(&a.viewers)
            .then_with(|| a.group.cmp(&b.group))
    });
    let keep_paths = prefix_fitting(&paths, &mut budget);
    let keep_streams = prefix_fitting(&streams, &mut budget);
    let keep_groups = prefix_fitting(&groups, &mut budget);
    let left: &[StreamState] = &streams[keep_streams..];
    let tail = ReportTail {
        streams: left.len() as u32,
        groups: (groups.len() - keep_groups) as u32,
        paths: (paths.len() - keep_paths) as u32,
        viewers: left
            .iter()
            .fold(0u32, |acc, s| acc.saturating_add(s.viewers)),
        bitrate_kbps: left.iter().map(|s| s.bitrate_kbps).sum(),
    };
    let trimmed = Trimmed {
        streams: tail.streams as usize,
        groups: tail.groups as usize,
        paths: tail.paths as usize,
    };
    streams.truncate(keep_streams);
    groups.truncate(keep_groups);
    paths.truncate(keep_paths);
    report.streams = streams;
    report.groups = groups;
    report.paths = paths;
    report.tail = Some(tail);
    trimmed
}

#[cfg(test)]
mod tests {
    use super::*;
    use vantage_proto::v1::{GroupQoe, Load, PathMeasurement, TelemetryFrame, telemetry_frame};

    fn stream(key: String, role: StreamRole, viewers: u32) -> StreamState {
        StreamState {
            key,
            role: role as i32,
            upstream: "up".into(),
            bitrate_kbps: 2000.0,
            viewers,
            ..StreamState::default()
        }
    }

    fn big_report(n: usize) -> Report {
        let mut r = Report {
            seq: 1,
            load: Some(Load {
                viewers: 99,
                ..Load::default()
            }),
            ..Report::default()
        };
        for i in 0..n {
            r.streams.push(stream(
                format!("live/{i:04}{}", "x".repeat(188)),
                StreamRole::Origin,
                0,
            ));
            r.groups.push(GroupQoe {
                group: format!("g{i}"),
                viewers: (i % 7) as u32,
                ..GroupQoe::default()
            });
        }
        r.streams
            .push(stream("live/watched".into(), StreamRole::Relay, 50));
        r.streams
            .push(stream("live/real".into(), StreamRole::Origin, 3));
        r.paths.push(PathMeasurement {
            target_node_id: "peer".into(),
            ..PathMeasurement::default()
        });
        r
    }

    fn frame_len(r: &Report) -> usize {
        TelemetryFrame {
            kind: Some(telemetry_frame::Kind::Report(r.clone())),
        }
        .encoded_len()
    }

    #[test]
    fn a_report_that_fits_is_untouched() {
        let mut r = big_report(3);
        let before = r.clone();
        assert_eq!(fit(&mut r, 64 * 1024), Trimmed::default());
        assert_eq!(r, before);
    }

    #[test]
    fn an_oversized_report_is_trimmed_to_fit_keeping_what_matters() {
        let mut r = big_report(400);
        assert!(frame_len(&r) > 64 * 1024);
        let trimmed = fit(&mut r, 64 * 1024);
        assert!(trimmed.streams > 0 && trimmed.any());
        assert!(frame_len(&r) <= 64 * 1024, "{}", frame_len(&r));
        // Paths kept; origins first (the real one with viewers before the
        // idle ones), the watched edge stream after every origin.
        assert_eq!(r.paths.len(), 1);
        assert_eq!(r.streams[0].key, "live/real");
        assert!(
            r.streams
                .iter()
                .all(|s| s.role == StreamRole::Origin as i32)
        );
        let tail = r.tail.unwrap();
        assert_eq!(tail.streams as usize, trimmed.streams);
        assert_eq!(r.streams.len() + tail.streams as usize, 402);
        assert_eq!(tail.viewers, 50, "the edge stream's viewers in the tail");
        assert_eq!(tail.groups as usize, 400 - r.groups.len());
        assert_eq!(r.load.unwrap().viewers, 99, "totals untouched");
    }

    #[test]
    fn even_a_tiny_limit_gives_a_frame_within_it() {
        let mut r = big_report(50);
        fit(&mut r, 200);
        assert!(frame_len(&r) <= 200, "{}", frame_len(&r));
        assert!(r.streams.len() <= 1, "{:?}", r.streams);
        assert!(r.tail.unwrap().streams >= 51);
    }
}
