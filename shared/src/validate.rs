//! Range checks of telemetry values. A report with a NaN, a negative RTT or a
//! loss above 1 is refused as a whole (the connection is closed with
//! [`crate::close::CloseCode::InvalidValue`]) rather than partially used.

use vantage_proto::v1::{Alert, Report};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} = {value} is out of range ({rule})")]
pub struct InvalidValue {
    pub field: String,
    pub value: f64,
    pub rule: &'static str,
}

fn check(
    field: impl FnOnce() -> String,
    value: f64,
    ok: bool,
    rule: &'static str,
) -> Result<(), InvalidValue> {
    if value.is_finite() && ok {
        Ok(())
    } else {
        Err(InvalidValue {
            field: field(),
            value,
            rule,
        })
    }
}

fn non_negative(field: impl FnOnce() -> String, v: f64) -> Result<(), InvalidValue> {
    check(field, v, v >= 0.0, "finite and ≥ 0")
}

fn unit(field: impl FnOnce() -> String, v: f64) -> Result<(), InvalidValue> {
    check(field, v, (0.0..=1.0).contains(&v), "finite, 0..1")
}

/// Validates every numeric field of a report.
pub fn report(r: &Report) -> Result<(), InvalidValue> {
    if let Some(l) = &r.load {
        unit(|| "load.cpu".into(), l.cpu)?;
        non_negative(|| "load.egress_mbps".into(), l.egress_mbps)?;
        non_negative(|| "load.ingress_mbps".into(), l.ingress_mbps)?;
        non_negative(
            || "load.comment_fanout_per_s".into(),
            l.comment_fanout_per_s,
        )?;
        non_negative(|| "load.comment_posts_per_s".into(), l.comment_posts_per_s)?;
        non_negative(
            || "load.comment_fanout_capacity_per_s".into(),
            l.comment_fanout_capacity_per_s,
        )?;
    }
    for (i, p) in r.paths.iter().enumerate() {
        non_negative(|| format!("paths[{i}].rtt_ewma_ms"), p.rtt_ewma_ms)?;
        non_negative(|| format!("paths[{i}].rtt_p50_ms"), p.rtt_p50_ms)?;
        non_negative(|| format!("paths[{i}].rtt_p95_ms"), p.rtt_p95_ms)?;
        unit(|| format!("paths[{i}].loss"), p.loss)?;
        non_negative(|| format!("paths[{i}].jitter_ms"), p.jitter_ms)?;
    }
    for (i, s) in r.streams.iter().enumerate() {
        non_negative(|| format!("streams[{i}].bitrate_kbps"), s.bitrate_kbps)?;
        non_negative(|| format!("streams[{i}].gop_cache_ms"), s.gop_cache_ms)?;
        check(
            || format!("streams[{i}].ingest_lag_ms"),
            s.ingest_lag_ms,
            true,
            "finite",
        )?;
        non_negative(
            || format!("streams[{i}].send_lag_p95_ms"),
            s.send_lag_p95_ms,
        )?;
    }
    for (i, g) in r.groups.iter().enumerate() {
        non_negative(|| format!("groups[{i}].tcp_rtt_ms"), g.tcp_rtt_ms)?;
        unit(|| format!("groups[{i}].retransmit_rate"), g.retransmit_rate)?;
        unit(|| format!("groups[{i}].stall_rate"), g.stall_rate)?;
        non_negative(|| format!("groups[{i}].buffer_ms"), g.buffer_ms)?;
    }
    if let Some(c) = &r.control_path {
        non_negative(|| "control_path.rtt_ms".into(), c.rtt_ms)?;
    }
    Ok(())
}

/// Validates an alert.
pub fn alert(a: &Alert) -> Result<(), InvalidValue> {
    check(|| "alert.value".into(), a.value, true, "finite")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vantage_proto::v1::{Load, PathMeasurement};

    #[test]
    fn refuses_nan_negative_and_loss_above_one() {
        let mut r = Report {
            load: Some(Load {
                cpu: 0.2,
                ..Default::default()
            }),
            paths: vec![PathMeasurement {
                rtt_ewma_ms: 10.0,
                loss: 0.1,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(report(&r).is_ok());
        r.paths[0].loss = 1.5;
        assert_eq!(report(&r).unwrap_err().field, "paths[0].loss");
        r.paths[0].loss = 0.0;
        r.paths[0].rtt_ewma_ms = -1.0;
        assert!(report(&r).is_err());
        r.paths[0].rtt_ewma_ms = 1.0;
        r.load.as_mut().unwrap().cpu = f64::NAN;
        assert_eq!(report(&r).unwrap_err().field, "load.cpu");
        r.load.as_mut().unwrap().cpu = 0.1;
        r.load.as_mut().unwrap().comment_fanout_per_s = -1.0;
        assert_eq!(report(&r).unwrap_err().field, "load.comment_fanout_per_s");
        r.load.as_mut().unwrap().comment_fanout_per_s = 10.0;
        r.load.as_mut().unwrap().comment_posts_per_s = f64::INFINITY;
        assert_eq!(report(&r).unwrap_err().field, "load.comment_posts_per_s");
    }
}
