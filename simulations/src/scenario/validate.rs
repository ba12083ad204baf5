//! Semantic validation of a parsed scenario: everything serde cannot check
//! (ranges, references between tables), each error naming the field path
//! and its line.

use super::*;

/// Timezone prefixes a region may name (GeoNames timezones).
pub const CONTINENTS: [&str; 10] = [
    "Africa",
    "America",
    "Antarctica",
    "Arctic",
    "Asia",
    "Atlantic",
    "Australia",
    "Europe",
    "Indian",
    "Pacific",
];

/// Whether `r` has the form of a region: a continent (timezone prefix,
/// any case) or an ISO 3166 alpha-2 code (two upper-case letters; whether
/// the code exists is checked against the cities when the world is built).
pub fn region_form(r: &str) -> Result<(), String> {
    if CONTINENTS.iter().any(|c| c.eq_ignore_ascii_case(r)) {
        return Ok(());
    }
    if r.len() == 2 && r.chars().all(|c| c.is_ascii_uppercase()) {
        return Ok(());
    }
    if r.len() == 2 && r.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(format!(
            "`{r}`: country codes are upper case (`{}`)",
            r.to_ascii_uppercase()
        ));
    }
    Err(format!(
        "`{r}` is neither a continent ({}) nor an ISO 3166 country code",
        CONTINENTS.join(", ")
    ))
}

impl Scenario {
    /// An error naming `field` at the line of byte offset `span_start`.
    pub fn err(
        &self,
        span_start: Option<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> SimError {
        SimError::Scenario {
            file: self.file.clone(),
            line: span_start.map(|s| line_of(&self.source, s)),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// Line of the first occurrence of `key =` (for top-level fields that
    /// carry no span).
    fn key_line(&self, key: &str) -> Option<usize> {
        let needle = format!("{key} ");
        let needle_eq = format!("{key}=");
        self.source
            .lines()
            .position(|l| {
                let t = l.trim_start();
                t.starts_with(&needle) || t.starts_with(&needle_eq)
            })
            .map(|i| i + 1)
    }

    fn err_key(&self, key: &str, field: &str, message: impl Into<String>) -> SimError {
        SimError::Scenario {
            file: self.file.clone(),
            line: self.key_line(key),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// Checks everything serde cannot: ranges, references between tables.
    pub fn validate(&self) -> Result<(), SimError> {
        let pos = |x: f64| x.is_finite() && x > 0.0;
        let nonneg = |x: f64| x.is_finite() && x >= 0.0;
        if !pos(self.duration_s) || self.duration_s > 30.0 * 86_400.0 {
            return Err(self.err_key(
                "duration_s",
                "duration_s",
                "must be > 0 and at most 30 days",
            ));
        }
        if self.seeds.is_empty() {
            return Err(self.err_key("seeds", "seeds", "needs at least one seed"));
        }
        if self.policies.is_empty() {
            return Err(self.err_key("policies", "policies", "needs at least one policy"));
        }
        for (i, p) in self.policies.iter().enumerate() {
            if !ALL_POLICIES.contains(&p.as_str()) {
                return Err(self.err_key(
                    "policies",
                    &format!("policies[{i}]"),
                    format!("unknown policy `{p}` (known: {})", ALL_POLICIES.join(", ")),
                ));
            }
        }
        if !(10..=60_000).contains(&self.tick_ms) {
            return Err(self.err_key("tick_ms", "tick_ms", "must be within 10..=60000"));
        }
        let t = &self.telemetry;
        if t.report_interval_ms == 0 || t.report_interval_ms > 600_000 {
            return Err(self.err_key(
                "report_interval_ms",
                "telemetry.report_interval_ms",
                "must be within 1..=600000",
            ));
        }
        if t.replan_interval_ms == 0 {
            return Err(self.err_key(
                "replan_interval_ms",
                "telemetry.replan_interval_ms",
                "must be > 0",
            ));
        }
        if !nonneg(t.noise) || t.noise > 1.0 {
            return Err(self.err_key("noise", "telemetry.noise", "must be within 0..=1"));
        }
        if !nonneg(t.loss_probability) || t.loss_probability > 1.0 {
            return Err(self.err_key(
                "loss_probability",
                "telemetry.loss_probability",
                "must be within 0..=1",
            ));
        }
        let n = &self.network;
        for (name, v) in [
            ("access_rtt_ms", n.access_rtt_ms),
            ("base_loss", n.base_loss),
            ("loss_per_1000km", n.loss_per_1000km),
            ("relay_base_loss", n.relay_base_loss),
            ("relay_loss_per_1000km", n.relay_loss_per_1000km),
            ("loss_at_capacity", n.loss_at_capacity),
            ("service_ms", n.service_ms),
            ("max_queue_ms", n.max_queue_ms),
            ("hop_processing_ms", n.hop_processing_ms),
        ] {
            if !nonneg(v) {
                return Err(self.err_key(name, &format!("network.{name}"), "must be ≥ 0"));
            }
        }
        if !(n.base_loss < 1.0 && n.loss_at_capacity < 1.0 && n.relay_base_loss < 1.0) {
            return Err(self.err_key("base_loss", "network.base_loss", "loss must be < 1"));
        }
        if !(n.congestion_knee > 0.0 && n.congestion_knee < 1.0) {
            return Err(self.err_key(
                "congestion_knee",
                "network.congestion_knee",
                "must be within (0, 1)",
            ));
        }
        if !pos(n.throughput_scale) {
            return Err(self.err_key(
                "throughput_scale",
                "network.throughput_scale",
                "must be > 0",
            ));
        }
        for (i, sp) in n.rtt.iter().enumerate() {
            let o = sp.get_ref();
            let at = Some(sp.span().start);
            if !(pos(o.rtt_ms) && o.rtt_ms < 10_000.0) {
                return Err(self.err(
                    at,
                    &format!("network.rtt[{i}].rtt_ms"),
                    "must be > 0 and < 10000",
                ));
            }
            if let Some(j) = o.jitter_ms
                && !nonneg(j)
            {
                return Err(self.err(at, &format!("network.rtt[{i}].jitter_ms"), "must be ≥ 0"));
            }
        }
        let p = &self.player;
        for (name, v) in [
            ("startup_buffer_ms", p.startup_buffer_ms),
            ("resume_buffer_ms", p.resume_buffer_ms),
            ("edge_queue_ms", p.edge_queue_ms),
            ("reconnect_timeout_ms", p.reconnect_timeout_ms),
            ("redirect_rtt_ms", p.redirect_rtt_ms),
            ("steering_ttl_ms", p.steering_ttl_ms),
            ("flv_reconnect_window_ms", p.flv_reconnect_window_ms),
            ("patience_min_ms", p.patience_min_ms),
            ("patience_mean_ms", p.patience_mean_ms),
        ] {
            if !nonneg(v) {
                return Err(self.err_key(name, &format!("player.{name}"), "must be ≥ 0"));
            }
        }
        if !(nonneg(p.hls_share) && p.hls_share <= 1.0) {
            return Err(self.err_key("hls_share", "player.hls_share", "must be within 0..=1"));
        }
        if !(pos(p.part_ms) && p.part_ms <= 10_000.0) {
            return Err(self.err_key("part_ms", "player.part_ms", "must be within (0, 10000]"));
        }
        let a = &self.access;
        for (name, v) in [
            ("mobile_share", a.mobile_share),
            ("constrained_share", a.constrained_share),
        ] {
            if !(nonneg(v) && v <= 1.0) {
                return Err(self.err_key(name, &format!("access.{name}"), "must be within 0..=1"));
            }
        }
        if a.mobile_share + a.constrained_share > 1.0 {
            return Err(self.err_key(
                "constrained_share",
                "access.constrained_share",
                "mobile_share + constrained_share must be at most 1",
            ));
        }
        for (name, v) in [
            ("fixed_sigma", a.fixed_sigma),
            ("mobile_sigma", a.mobile_sigma),
            ("mobile_variability", a.mobile_variability),
        ] {
            if !(nonneg(v) && v <= 5.0) {
                return Err(self.err_key(name, &format!("access.{name}"), "must be within 0..=5"));
            }
        }
        if let Some(w) = &self.qoe.weights
            && let Err(e) = w.validate()
        {
            return Err(self.err_key("weights", "qoe.weights", e.to_string()));
        }
        if let Some(r) = &self.qoe.ranges
            && let Err(e) = r.validate()
        {
            return Err(self.err_key("ranges", "qoe.ranges", e.to_string()));
        }
        if let Some(d) = &self.qoe.deadband
            && let Err(e) = d.validate()
        {
            return Err(self.err_key("deadband", "qoe.deadband", e));
        }
        if let Some(r) = &self.qoe.resolve
            && let Err(e) = r.validate()
        {
            return Err(self.err_key("resolve", "qoe.resolve", e.to_string()));
        }
        if self.pops.is_empty() {
            return Err(self.err(None, "pops", "needs at least one [[pops]] entry"));
        }
        if self.pops.len() + self.origins.len() > 5000 {
            return Err(self.err(None, "pops", "at most 5000 nodes"));
        }
        if self.origins.is_empty() {
            return Err(self.err(None, "origins", "needs at least one [[origins]] entry"));
        }
        let mut ids = std::collections::BTreeSet::new();
        for (table, list) in [("pops", &self.pops), ("origins", &self.origins)] {
            for (i, sp) in list.iter().enumerate() {
                let node = sp.get_ref();
                let at = Some(sp.span().start);
                if !vantage_shared::auth::valid_node_id(&node.id) {
                    return Err(self.err(at, &format!("{table}[{i}].id"), "not a valid node id"));
                }
                if !ids.insert(node.id.clone()) {
                    return Err(self.err(
                        at,
                        &format!("{table}[{i}].id"),
                        format!("duplicate id `{}`", node.id),
                    ));
                }
                match (&node.city, node.lat, node.lon) {
                    (Some(_), None, None) => {}
                    (None, Some(lat), Some(lon)) => {
                        if vantage_shared::place::Coord::new(lat, lon).is_none() {
                            return Err(self.err(
                                at,
                                &format!("{table}[{i}].lat"),
                                "coordinates out of range",
                            ));
                        }
                    }
                    _ => {
                        return Err(self.err(
                            at,
                            &format!("{table}[{i}].city"),
                            "give either `city` or both `lat` and `lon`",
                        ));
                    }
                }
                if !pos(node.capacity_mbps) {
                    return Err(self.err(
                        at,
                        &format!("{table}[{i}].capacity_mbps"),
                        "must be > 0",
                    ));
                }
            }
        }
        let st = self.streams.get_ref();
        let at = Some(self.streams.span().start);
        if st.count == 0 || st.count > 100_000 {
            return Err(self.err(at, "streams.count", "must be within 1..=100000"));
        }
        for (i, o) in st.origins.iter().enumerate() {
            if !self.origins.iter().any(|x| &x.get_ref().id == o) {
                return Err(self.err(
                    at,
                    &format!("streams.origins[{i}]"),
                    format!("no [[origins]] entry with id `{o}`"),
                ));
            }
        }
        if !nonneg(st.zipf_s) || st.zipf_s > 10.0 {
            return Err(self.err(at, "streams.zipf_s", "must be within 0..=10"));
        }
        if !pos(st.bitrate_kbps) || st.bitrate_kbps > 100_000.0 {
            return Err(self.err(at, "streams.bitrate_kbps", "must be within (0, 100000]"));
        }
        if st.ladder_kbps.len() > 8 {
            return Err(self.err(at, "streams.ladder_kbps", "at most 8 renditions"));
        }
        for (i, &k) in st.ladder_kbps.iter().enumerate() {
            if !pos(k) || k > 100_000.0 {
                return Err(self.err(
                    at,
                    &format!("streams.ladder_kbps[{i}]"),
                    "must be within (0, 100000]",
                ));
            }
            if i > 0 && k <= st.ladder_kbps[i - 1] {
                return Err(self.err(
                    at,
                    &format!("streams.ladder_kbps[{i}]"),
                    "renditions must be in ascending order",
                ));
            }
        }
        if !(st.gop_ms.is_finite() && (100.0..=20_000.0).contains(&st.gop_ms)) {
            return Err(self.err(at, "streams.gop_ms", "must be within 100..=20000"));
        }
        match &st.lifetime {
            Lifetime::Seconds(s) if !pos(*s) => {
                return Err(self.err(at, "streams.lifetime", "seconds must be > 0"));
            }
            Lifetime::Named(n) if n != "ytlive" && n != "forever" => {
                return Err(self.err(
                    at,
                    "streams.lifetime",
                    format!("`{n}`: expected \"ytlive\", \"forever\" or a number of seconds"),
                ));
            }
            _ => {}
        }
        let v = self.viewers.get_ref();
        let at = Some(self.viewers.span().start);
        if v.arrivals.is_empty() {
            return Err(self.err(at, "viewers.arrivals", "needs at least one [time_s, rate]"));
        }
        for (i, [t, r]) in v.arrivals.iter().enumerate() {
            if !nonneg(*t) || !nonneg(*r) || *r > 1e6 {
                return Err(self.err(
                    at,
                    &format!("viewers.arrivals[{i}]"),
                    "time and rate must be finite, ≥ 0 (rate ≤ 1e6/s)",
                ));
            }
            if i > 0 && *t < v.arrivals[i - 1][0] {
                return Err(self.err(
                    at,
                    &format!("viewers.arrivals[{i}]"),
                    "times must not decrease",
                ));
            }
        }
        for (i, r) in v.regions.iter().enumerate() {
            if let Err(m) = region_form(r) {
                return Err(self.err(at, &format!("viewers.regions[{i}]"), m));
            }
        }
        for (region, curve) in &v.region_weights {
            if !v.regions.iter().any(|x| x == region) {
                return Err(self.err(
                    at,
                    &format!("viewers.region_weights.{region}"),
                    format!("`{region}` is not in viewers.regions"),
                ));
            }
            if curve.is_empty() || curve.iter().any(|[t, w]| !nonneg(*t) || !nonneg(*w)) {
                return Err(self.err(
                    at,
                    &format!("viewers.region_weights.{region}"),
                    "needs [time_s, weight] points, finite and ≥ 0",
                ));
            }
        }
        let bad_session = match &v.session {
            SessionSpec::Lognormal { median_s, sigma } => {
                !pos(*median_s) || !nonneg(*sigma) || *sigma > 5.0
            }
            SessionSpec::Exponential { mean_s } => !pos(*mean_s),
            SessionSpec::Fixed { seconds } => !pos(*seconds),
        };
        if bad_session {
            return Err(self.err(
                at,
                "viewers.session",
                "lengths must be > 0 (sigma within 0..=5)",
            ));
        }
        let node_exists = |id: &str| ids.contains(id);
        for (i, sp) in self.network.rtt.iter().enumerate() {
            let o = sp.get_ref();
            if !node_exists(&o.from) {
                return Err(self.err(
                    Some(sp.span().start),
                    &format!("network.rtt[{i}].from"),
                    format!("no node with id `{}`", o.from),
                ));
            }
        }
        for (i, sp) in self.events.iter().enumerate() {
            let ev = sp.get_ref();
            let at = Some(sp.span().start);
            let f = |name: &str| format!("events[{i}].{name}");
            if !nonneg(ev.at_s()) {
                return Err(self.err(at, &f("at_s"), "must be ≥ 0"));
            }
            if !nonneg(ev.ramp_s()) {
                return Err(self.err(at, &f("ramp_s"), "must be ≥ 0"));
            }
            match ev {
                EventSpec::PopDown { pop, .. } | EventSpec::PopUp { pop, .. } => {
                    if !node_exists(pop) {
                        return Err(self.err(at, &f("pop"), format!("no node with id `{pop}`")));
                    }
                }
                EventSpec::LinkDegrade {
                    at_s,
                    until_s,
                    from,
                    to,
                    extra_rtt_ms,
                    loss,
                    ..
                } => {
                    if !node_exists(from) {
                        return Err(self.err(at, &f("from"), format!("no node with id `{from}`")));
                    }
                    if let Some(to) = to
                        && !node_exists(to)
                    {
                        return Err(self.err(at, &f("to"), format!("no node with id `{to}`")));
                    }
                    if !nonneg(*extra_rtt_ms) {
                        return Err(self.err(at, &f("extra_rtt_ms"), "must be ≥ 0"));
                    }
                    if !(nonneg(*loss) && *loss < 1.0) {
                        return Err(self.err(at, &f("loss"), "must be within 0..1"));
                    }
                    if let Some(u) = until_s
                        && !(u.is_finite() && u > at_s)
                    {
                        return Err(self.err(at, &f("until_s"), "must be after at_s"));
                    }
                }
                EventSpec::FlashCrowd {
                    at_s,
                    until_s,
                    multiplier,
                    stream,
                    region,
                    ..
                } => {
                    if let Some(r) = region
                        && !v.regions.iter().any(|x| x == r)
                        && let Err(m) = region_form(r)
                    {
                        return Err(self.err(at, &f("region"), m));
                    }
                    if !(until_s.is_finite() && until_s > at_s) {
                        return Err(self.err(at, &f("until_s"), "must be after at_s"));
                    }
                    if !nonneg(*multiplier) || *multiplier > 1000.0 {
                        return Err(self.err(at, &f("multiplier"), "must be within 0..=1000"));
                    }
                    if let Some(s) = stream
                        && *s >= st.count
                    {
                        return Err(self.err(
                            at,
                            &f("stream"),
                            format!("stream rank {s} ≥ streams.count"),
                        ));
                    }
                }
                EventSpec::TelemetryLoss {
                    at_s, until_s, pop, ..
                } => {
                    if !(until_s.is_finite() && until_s > at_s) {
                        return Err(self.err(at, &f("until_s"), "must be after at_s"));
                    }
                    if let Some(pop) = pop
                        && !node_exists(pop)
                    {
                        return Err(self.err(at, &f("pop"), format!("no node with id `{pop}`")));
                    }
                }
                EventSpec::TelemetryDelay { at_s, until_s, .. } => {
                    if !(until_s.is_finite() && until_s > at_s) {
                        return Err(self.err(at, &f("until_s"), "must be after at_s"));
                    }
                }
            }
        }
        Ok(())
    }
}
