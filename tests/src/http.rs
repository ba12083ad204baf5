//! Small JSON-over-HTTP client for the scheduler API and agent admin API.
//!
//! Every call returns `(status, body)`; a body that is not JSON comes back as
//! `Value::String`, and a transport error as status 0 with the error text,
//! so a poll loop can keep polling while a process starts or restarts.

use serde_json::Value;
use std::time::Duration;

/// Status used for "no HTTP answer at all" (connection refused, timeout).
pub const NO_ANSWER: u16 = 0;

#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    pub fn new() -> Self {
        Self::build(None, true)
    }

    /// A client that does not follow redirects and whose connections leave
    /// from `ip` (a loopback address such as 127.0.0.2: another "client"
    /// for per-client limits).
    pub fn bound_to(ip: std::net::IpAddr) -> Self {
        Self::build(Some(ip), false)
    }

    fn build(ip: Option<std::net::IpAddr>, follow: bool) -> Self {
        let redirect = if follow {
            reqwest::redirect::Policy::default()
        } else {
            reqwest::redirect::Policy::none()
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .no_proxy()
            .redirect(redirect)
            .local_address(ip)
            .build()
            .unwrap_or_else(|e| panic!("http client: {e}"));
        Http { client }
    }

    /// Any request: `method url` with `headers` and an optional body.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .unwrap_or_else(|e| panic!("method {method:?}: {e}"));
        let mut req = self.client.request(method, url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(req).await
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                (status, body)
            }
            Err(e) => (NO_ANSWER, Value::String(format!("request failed: {e}"))),
        }
    }

    pub async fn get(&self, url: &str) -> (u16, Value) {
        self.send(self.client.get(url)).await
    }

    /// GET returning the body as text (e.g. `/metrics`).
    pub async fn get_text(&self, url: &str) -> (u16, String) {
        match self.client.get(url).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (status, resp.text().await.unwrap_or_default())
            }
            Err(e) => (NO_ANSWER, format!("request failed: {e}")),
        }
    }

    pub async fn put_json(&self, url: &str, body: &Value) -> (u16, Value) {
        self.send(self.client.put(url).json(body)).await
    }

    /// PUT with a raw body (for malformed JSON) and a JSON content type.
    pub async fn put_raw(&self, url: &str, body: &str) -> (u16, Value) {
        self.send(
            self.client
                .put(url)
                .header("content-type", "application/json")
                .body(body.to_owned()),
        )
        .await
    }

    pub async fn post_json(&self, url: &str, body: &Value) -> (u16, Value) {
        self.send(self.client.post(url).json(body)).await
    }

    pub async fn post_empty(&self, url: &str) -> (u16, Value) {
        self.send(self.client.post(url)).await
    }
}

/// A field of a JSON object by its snake_case name, falling back to the
/// lowerCamelCase spelling (protobuf JSON) — route tables are rendered
/// either way.
pub fn field<'a>(v: &'a Value, snake: &str) -> Option<&'a Value> {
    if let Some(x) = v.get(snake) {
        return Some(x);
    }
    let mut camel = String::with_capacity(snake.len());
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            camel.extend(c.to_uppercase());
            up = false;
        } else {
            camel.push(c);
        }
    }
    v.get(&camel)
}

/// A JSON number (or a decimal string, as protobuf JSON renders 64-bit
/// integers) as u64.
pub fn as_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Whether any string anywhere inside `v` equals `needle`.
pub fn mentions(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => s == needle,
        Value::Array(a) => a.iter().any(|x| mentions(x, needle)),
        Value::Object(o) => o.values().any(|x| mentions(x, needle)),
        _ => false,
    }
}

/// Sum of the samples of a Prometheus metric whose labels contain every
/// `key="value"` of `labels` (None when no sample matches).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = r.split_once('}') else {
                continue;
            };
            (l, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue; // another metric sharing the prefix
        };
        let all = labels
            .iter()
            .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")));
        if !all {
            continue;
        }
        let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        *found.get_or_insert(0.0) += v;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metric_parsing() {
        let text = "# HELP x\n\
            vantage_scheduler_telemetry_rejected_total{reason=\"bad_token\"} 2\n\
            vantage_scheduler_telemetry_rejected_total{reason=\"undecodable\"} 1\n\
            vantage_scheduler_telemetry_rejected_total_other 9\n\
            vantage_scheduler_reports_total 42\n";
        let m = |n, l: &[(&str, &str)]| metric(text, n, l);
        assert_eq!(
            m(
                "vantage_scheduler_telemetry_rejected_total",
                &[("reason", "bad_token")]
            ),
            Some(2.0)
        );
        assert_eq!(
            m("vantage_scheduler_telemetry_rejected_total", &[]),
            Some(3.0)
        );
        assert_eq!(m("vantage_scheduler_reports_total", &[]), Some(42.0));
        assert_eq!(
            m(
                "vantage_scheduler_telemetry_rejected_total",
                &[("reason", "nope")]
            ),
            None
        );
    }

    #[test]
    fn fields_and_mentions() {
        let v = json!({"weightsVersion": "7", "a": [{"node_id": "n1"}]});
        assert_eq!(as_u64(field(&v, "weights_version")), Some(7));
        assert!(mentions(&v, "n1"));
        assert!(!mentions(&v, "n2"));
    }
}
