//! Loading the real-world data files: the WonderNetwork latency matrix,
//! GeoNames cities, FCC last-mile throughput traces and YouTube live
//! durations. Columns are found by header name, so the original files in
//! `shared/data/` load as well as the trimmed copies in `simulations/data/`.

use crate::error::SimError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vantage_shared::place::Coord;

/// A measurement server (a city) of the latency matrix.
#[derive(Debug, Clone)]
pub struct Server {
    pub id: u32,
    pub name: String,
    pub title: String,
    pub coord: Coord,
}

/// Round-trip times between servers (average and mean deviation, ms);
/// NaN where the pair was not measured.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub servers: Vec<Server>,
    n: usize,
    avg: Vec<f32>,
    mdev: Vec<f32>,
}

impl Matrix {
    /// Measured (avg, mdev) between servers `a` and `b` (indices), the mean
    /// of both directions where both were measured.
    pub fn get(&self, a: usize, b: usize) -> Option<(f64, f64)> {
        let v = self.avg[a * self.n + b];
        (!v.is_nan()).then(|| (f64::from(v), f64::from(self.mdev[a * self.n + b])))
    }

    /// Index of the server nearest to `c` and its distance in km.
    pub fn nearest(&self, c: &Coord) -> Option<(usize, f64)> {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.coord.km_to(c)))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
    }

    /// A server by name or title (case-insensitive).
    pub fn by_city(&self, city: &str) -> Option<usize> {
        let c = city.to_ascii_lowercase();
        self.servers
            .iter()
            .position(|s| s.name.to_ascii_lowercase() == c || s.title.to_ascii_lowercase() == c)
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// A city viewers come from.
#[derive(Debug, Clone)]
pub struct City {
    pub name: String,
    pub country: String,
    pub coord: Coord,
    pub population: u64,
    pub timezone: String,
}

/// A last-mile throughput trace: Mbps every `step_s` seconds.
#[derive(Debug, Clone)]
pub struct Trace {
    pub name: String,
    pub step_s: f64,
    pub mbps: Vec<f32>,
    /// Mean of the samples.
    pub mean_mbps: f64,
    /// The trace's shape: each sample over the mean of the measured ones,
    /// where samples under [`IDLE_SHARE`] of that mean (no transfer in the
    /// interval: the FCC traces log web browsing, with idle gaps between
    /// page loads) repeat the measured sample before them.
    shape: Vec<f32>,
}

/// Samples under this share of a trace's mean are idle gaps, not capacity.
pub const IDLE_SHARE: f64 = 0.05;

impl Trace {
    fn new(name: String, step_s: f64, mbps: Vec<f32>) -> Self {
        let mean_mbps = mbps.iter().map(|&x| f64::from(x)).sum::<f64>() / mbps.len().max(1) as f64;
        let busy = |x: f32| f64::from(x) >= IDLE_SHARE * mean_mbps;
        let (sum, n) = mbps
            .iter()
            .filter(|&&x| busy(x))
            .fold((0.0, 0usize), |(s, n), &x| (s + f64::from(x), n + 1));
        let busy_mean = if n > 0 { sum / n as f64 } else { 1.0 };
        let mut last = mbps.iter().copied().find(|&x| busy(x)).unwrap_or(1.0);
        let shape = mbps
            .iter()
            .map(|&x| {
                if busy(x) {
                    last = x;
                }
                (f64::from(last) / busy_mean) as f32
            })
            .collect();
        Trace {
            name,
            step_s,
            mbps,
            mean_mbps,
            shape,
        }
    }

    /// The trace's shape at `t_s` (1 on average over measured samples),
    /// for capacities drawn elsewhere that vary like the trace.
    pub fn shape(&self, t_s: f64) -> f64 {
        let len = self.shape.len().max(1);
        let i = (t_s / self.step_s).floor().max(0.0) as usize % len;
        f64::from(self.shape.get(i).copied().unwrap_or(1.0))
    }

    /// Throughput at `t_s` seconds into the trace (wrapping around).
    pub fn at(&self, t_s: f64) -> f64 {
        let len = self.mbps.len().max(1);
        let i = (t_s / self.step_s).floor().max(0.0) as usize % len;
        f64::from(self.mbps.get(i).copied().unwrap_or(0.0))
    }

    pub fn duration_s(&self) -> f64 {
        self.step_s * self.mbps.len() as f64
    }
}

fn read(path: &Path) -> Result<String, SimError> {
    std::fs::read_to_string(path).map_err(|e| SimError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

fn data_err(path: &Path, line: usize, message: impl Into<String>) -> SimError {
    SimError::Data {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// A CSV with a header; fields split on commas (the data has no quoting).
struct Csv<'a> {
    path: &'a Path,
    cols: HashMap<String, usize>,
    rows: Vec<(usize, Vec<&'a str>)>,
}

impl<'a> Csv<'a> {
    fn parse(path: &'a Path, text: &'a str) -> Result<Self, SimError> {
        let mut lines = text.lines().enumerate();
        let (_, header) = lines
            .next()
            .ok_or_else(|| data_err(path, 1, "empty file"))?;
        let cols = header
            .split(',')
            .enumerate()
            .filter(|(_, h)| !h.trim().is_empty())
            .map(|(i, h)| (h.trim().to_ascii_lowercase(), i))
            .collect();
        let rows = lines
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, l.split(',').collect()))
            .collect();
        Ok(Self { path, cols, rows })
    }

    fn col(&self, names: &[&str]) -> Result<usize, SimError> {
        names
            .iter()
            .find_map(|n| self.cols.get(*n).copied())
            .ok_or_else(|| data_err(self.path, 1, format!("no column `{}`", names[0])))
    }

    fn field<'r>(&self, row: &'r (usize, Vec<&'a str>), col: usize) -> Result<&'r str, SimError> {
        row.1
            .get(col)
            .map(|s| s.trim())
            .ok_or_else(|| data_err(self.path, row.0, format!("missing column {}", col + 1)))
    }

    fn num(&self, row: &(usize, Vec<&'a str>), col: usize) -> Result<f64, SimError> {
        let f = self.field(row, col)?;
        f.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| data_err(self.path, row.0, format!("not a number: `{f}`")))
    }
}

/// Loads `servers.csv` and `pings.csv` into a matrix.
pub fn load_matrix(servers: &Path, pings: &Path) -> Result<Matrix, SimError> {
    let text = read(servers)?;
    let csv = Csv::parse(servers, &text)?;
    let (ci, cn, ct, clat, clon) = (
        csv.col(&["id"])?,
        csv.col(&["name"])?,
        csv.col(&["title"])?,
        csv.col(&["latitude", "lat"])?,
        csv.col(&["longitude", "lon"])?,
    );
    let mut list = Vec::new();
    for row in &csv.rows {
        let id = csv.num(row, ci)?;
        let coord = Coord::new(csv.num(row, clat)?, csv.num(row, clon)?)
            .ok_or_else(|| data_err(servers, row.0, "coordinates out of range"))?;
        list.push(Server {
            id: id as u32,
            name: csv.field(row, cn)?.to_owned(),
            title: csv.field(row, ct)?.to_owned(),
            coord,
        });
    }
    list.sort_by_key(|s| s.id);
    list.dedup_by_key(|s| s.id);
    let n = list.len();
    let index: HashMap<u32, usize> = list.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    let mut sum = vec![0f64; n * n];
    let mut dev = vec![0f64; n * n];
    let mut cnt = vec![0u8; n * n];
    let text = read(pings)?;
    let csv = Csv::parse(pings, &text)?;
    let (cs, cd, ca, cm) = (
        csv.col(&["source"])?,
        csv.col(&["destination"])?,
        csv.col(&["avg"])?,
        csv.col(&["mdev"])?,
    );
    for row in &csv.rows {
        let (s, d) = (csv.num(row, cs)? as u32, csv.num(row, cd)? as u32);
        // Ids without a server row are skipped (the source data has 4).
        let (Some(&a), Some(&b)) = (index.get(&s), index.get(&d)) else {
            continue;
        };
        let (avg, mdev) = (csv.num(row, ca)?, csv.num(row, cm)?);
        if avg < 0.0 || mdev < 0.0 {
            return Err(data_err(pings, row.0, "negative RTT"));
        }
        for (x, y) in [(a, b), (b, a)] {
            sum[x * n + y] += avg;
            dev[x * n + y] += mdev;
            cnt[x * n + y] = cnt[x * n + y].saturating_add(1);
        }
    }
    let avg = sum
        .iter()
        .zip(&cnt)
        .map(|(s, &c)| {
            if c == 0 {
                f32::NAN
            } else {
                (s / f64::from(c)) as f32
            }
        })
        .collect();
    let mdev = dev
        .iter()
        .zip(&cnt)
        .map(|(s, &c)| {
            if c == 0 {
                0.0
            } else {
                (s / f64::from(c)) as f32
            }
        })
        .collect();
    Ok(Matrix {
        servers: list,
        n,
        avg,
        mdev,
    })
}

/// Loads cities with at least `min_population` inhabitants.
pub fn load_cities(path: &Path, min_population: u64) -> Result<Vec<City>, SimError> {
    let text = read(path)?;
    let csv = Csv::parse(path, &text)?;
    let (cn, cc, clat, clon, cp, ctz) = (
        csv.col(&["name"])?,
        csv.col(&["countrycode", "country"])?,
        csv.col(&["latitude", "lat"])?,
        csv.col(&["longitude", "lon"])?,
        csv.col(&["population"])?,
        csv.col(&["timezone"])?,
    );
    let mut out = Vec::new();
    for row in &csv.rows {
        let population = csv.num(row, cp)?.max(0.0) as u64;
        if population < min_population {
            continue;
        }
        let coord = Coord::new(csv.num(row, clat)?, csv.num(row, clon)?)
            .ok_or_else(|| data_err(path, row.0, "coordinates out of range"))?;
        out.push(City {
            name: csv.field(row, cn)?.to_owned(),
            country: csv.field(row, cc)?.to_owned(),
            coord,
            population,
            timezone: csv.field(row, ctz)?.to_owned(),
        });
    }
    Ok(out)
}

/// Loads stream durations (minutes → seconds).
pub fn load_durations(path: &Path) -> Result<Vec<f64>, SimError> {
    let text = read(path)?;
    let csv = Csv::parse(path, &text)?;
    let c = csv.col(&["duration_min", "duration_in_minutes"])?;
    let mut out = Vec::new();
    for row in &csv.rows {
        let m = csv.num(row, c)?;
        if m > 0.0 {
            out.push(m * 60.0);
        }
    }
    if out.is_empty() {
        return Err(data_err(path, 1, "no durations"));
    }
    Ok(out)
}

/// Median last-mile download speeds of one country, Mbps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccessSpeed {
    pub fixed_mbps: f64,
    pub mobile_mbps: f64,
}

/// Median speeds by ISO country code; the row `*` (required) is the
/// fallback for countries not listed and for empty cells.
#[derive(Debug, Clone)]
pub struct AccessSpeeds {
    pub by_country: HashMap<String, AccessSpeed>,
    pub fallback: AccessSpeed,
}

impl AccessSpeeds {
    pub fn of(&self, country: &str) -> AccessSpeed {
        self.by_country
            .get(country)
            .copied()
            .unwrap_or(self.fallback)
    }
}

/// Loads `access-speeds.csv`: `country,fixed_mbps,mobile_mbps[,source]`.
pub fn load_access_speeds(path: &Path) -> Result<AccessSpeeds, SimError> {
    let text = read(path)?;
    let csv = Csv::parse(path, &text)?;
    let (cc, cf, cm) = (
        csv.col(&["country"])?,
        csv.col(&["fixed_mbps"])?,
        csv.col(&["mobile_mbps"])?,
    );
    let mut rows = Vec::new();
    for row in &csv.rows {
        let cell = |c: usize| -> Result<Option<f64>, SimError> {
            let f = csv.field(row, c)?;
            if f.is_empty() {
                return Ok(None);
            }
            let v = csv.num(row, c)?;
            if v <= 0.0 {
                return Err(data_err(path, row.0, "speeds must be > 0"));
            }
            Ok(Some(v))
        };
        rows.push((csv.field(row, cc)?.to_owned(), cell(cf)?, cell(cm)?, row.0));
    }
    let Some((_, Some(f), Some(m), _)) = rows.iter().find(|r| r.0 == "*") else {
        return Err(data_err(
            path,
            1,
            "needs a `*` row with both speeds (the fallback)",
        ));
    };
    let fallback = AccessSpeed {
        fixed_mbps: *f,
        mobile_mbps: *m,
    };
    let mut by_country = HashMap::new();
    for (c, f, m, line) in rows {
        if c == "*" {
            continue;
        }
        if c.len() != 2 || !c.chars().all(|x| x.is_ascii_uppercase()) {
            return Err(data_err(
                path,
                line,
                format!("`{c}`: not an ISO country code"),
            ));
        }
        by_country.insert(
            c,
            AccessSpeed {
                fixed_mbps: f.unwrap_or(fallback.fixed_mbps),
                mobile_mbps: m.unwrap_or(fallback.mobile_mbps),
            },
        );
    }
    Ok(AccessSpeeds {
        by_country,
        fallback,
    })
}

/// Loads every trace matching `pattern` (a path whose file name may hold
/// `*` and `?`), sorted by file name. Unevenly spaced traces are
/// resampled onto their median step (linear interpolation); each one
/// resampled adds a line to `notes`.
pub fn load_traces(pattern: &Path, notes: &mut Vec<String>) -> Result<Vec<Trace>, SimError> {
    let dir = pattern
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let glob = pattern
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let entries = std::fs::read_dir(&dir).map_err(|e| SimError::Io {
        path: dir.clone(),
        source: e,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .is_some_and(|f| glob_match(&glob, &f.to_string_lossy()))
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = read(&f)?;
        let mut times = Vec::new();
        let mut mbps = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let mut it = line.split_whitespace();
            let (Some(t), Some(v)) = (it.next(), it.next()) else {
                continue;
            };
            let (t, v) = match (t.parse::<f64>(), v.parse::<f64>()) {
                (Ok(t), Ok(v)) if t.is_finite() && v.is_finite() && v >= 0.0 => (t, v),
                _ => return Err(data_err(&f, i + 1, "expected `time_s throughput_mbps`")),
            };
            if let Some(&prev) = times.last()
                && t <= prev
            {
                return Err(data_err(&f, i + 1, "times must increase"));
            }
            times.push(t);
            mbps.push(v as f32);
        }
        if mbps.len() < 2 {
            return Err(data_err(&f, 1, "a trace needs at least 2 samples"));
        }
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut steps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        steps.sort_by(f64::total_cmp);
        let step_s = steps[steps.len() / 2].max(0.1);
        let uneven = steps.iter().any(|d| (d - step_s).abs() > 0.01 * step_s);
        if uneven {
            let (t0, t1) = (times[0], times[times.len() - 1]);
            let n = (((t1 - t0) / step_s).floor() as usize + 1).min(10_000_000);
            let mut j = 0;
            let resampled: Vec<f32> = (0..n)
                .map(|k| {
                    let t = t0 + k as f64 * step_s;
                    while j + 1 < times.len() - 1 && times[j + 1] < t {
                        j += 1;
                    }
                    let (ta, tb) = (times[j], times[j + 1]);
                    let (va, vb) = (f64::from(mbps[j]), f64::from(mbps[j + 1]));
                    let x = ((t - ta) / (tb - ta)).clamp(0.0, 1.0);
                    (va + (vb - va) * x) as f32
                })
                .collect();
            notes.push(format!(
                "{}: unevenly spaced samples (steps {:.3}–{:.3} s) resampled every {step_s:.3} s",
                f.display(),
                steps[0],
                steps[steps.len() - 1]
            ));
            out.push(Trace::new(name, step_s, resampled));
        } else {
            out.push(Trace::new(name, step_s, mbps));
        }
    }
    if out.is_empty() {
        return Err(SimError::World(format!(
            "viewers.traces: no file matches `{}`",
            pattern.display()
        )));
    }
    Ok(out)
}

/// `*` (any run) and `?` (one character) matching.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        assert!(glob_match("*", "abc"));
        assert!(glob_match("trace_*_http*", "trace_1_http---x"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "abbc"));
        assert!(!glob_match("x*", "abc"));
    }
}
