//! A headless Chromium driven over the Chrome DevTools Protocol (CDP), for
//! tests that look at a page the way an operator would: load it, wait for
//! the DOM, click, type, take a PNG screenshot.
//!
//! ```ignore
//! let Some(bin) = browser::chromium("my_test") else { return }; // SKIPPED (fails under CI=true)
//! let mut b = Browser::launch(&bin, 1280, 900).await?;
//! b.goto("http://127.0.0.1:7480/").await?;
//! b.wait_for("document.querySelectorAll('tr').length > 3", Duration::from_secs(10)).await?;
//! b.click("#save").await?;
//! let png = b.screenshot(Path::new("shot.png")).await?;
//! ```
//!
//! For a one-off picture of a static file, [`screenshot_once`] runs
//! `chromium --headless --screenshot` without a protocol session.
//!
//! Chromium runs with its own temporary profile, `--remote-debugging-port=0`
//! (the port is read from `<profile>/DevToolsActivePort`), and is killed
//! when the [`Browser`] is dropped.

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long one protocol call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("starting chromium: {0}")]
    Spawn(std::io::Error),
    #[error("chromium exited before opening its DevTools port: {0}")]
    Exited(String),
    #[error("chromium did not open its DevTools port within {0:?}")]
    NoPort(Duration),
    #[error("DevTools HTTP endpoint: {0}")]
    Http(String),
    #[error("DevTools websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("{method}: {message}")]
    Protocol { method: String, message: String },
    #[error("{0} timed out")]
    Timeout(String),
    #[error("page script threw: {0}")]
    Script(String),
    #[error("no element matches {0:?}")]
    NoElement(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The Chromium executable (`chromium`, `chromium-browser`, `google-chrome`)
/// on `PATH`, or `VANTAGE_CHROMIUM`; None after printing `SKIPPED <test>`,
/// a panic under `CI=true` (scripts/test.sh installs Chromium).
pub fn chromium(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VANTAGE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p).find_map(|d| {
            ["chromium", "chromium-browser", "google-chrome"]
                .iter()
                .map(|n| d.join(n))
                .find(|f| f.is_file())
        })
    });
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: chromium not installed (CI=true; scripts/test.sh installs it)");
        }
        eprintln!("SKIPPED {test}: chromium not installed");
    }
    found
}

/// Flags for a quiet, sandbox-free (tests may run as root), offline-friendly
/// headless Chromium.
fn base_args(profile: &Path, width: u32, height: u32) -> Vec<String> {
    vec![
        "--headless".into(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--no-first-run".into(),
        "--no-default-browser-check".into(),
        "--disable-extensions".into(),
        "--disable-background-networking".into(),
        "--disable-sync".into(),
        "--disable-component-update".into(),
        "--metrics-recording-only".into(),
        "--mute-audio".into(),
        "--hide-scrollbars".into(),
        format!("--user-data-dir={}", profile.display()),
        format!("--window-size={width},{height}"),
    ]
}

/// `chromium --headless --screenshot=OUT --window-size=W,H URL`: one PNG of
/// a page (a local `file://` report, say), no protocol session. Returns the
/// PNG's bytes.
pub async fn screenshot_once(
    bin: &Path,
    url: &str,
    out: &Path,
    width: u32,
    height: u32,
) -> Result<Vec<u8>, BrowserError> {
    let profile = tempfile::tempdir()?;
    let mut args = base_args(profile.path(), width, height);
    args.push(format!("--screenshot={}", out.display()));
    args.push("--virtual-time-budget=5000".into());
    args.push(url.into());
    let mut child = Command::new(bin)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(BrowserError::Spawn)?;
    let mut stderr = child.stderr.take();
    let log = tokio::spawn(async move {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = tokio::io::AsyncReadExt::read_to_string(e, &mut s).await;
        }
        s
    });
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .map_err(|_| BrowserError::Timeout("chromium --screenshot".into()))??;
    let log = log.await.unwrap_or_default();
    match std::fs::read(out) {
        Ok(png) if status.success() && png.starts_with(PNG_MAGIC) => Ok(png),
        _ => Err(BrowserError::Exited(format!("{status}: {log}"))),
    }
}

/// The first bytes of every PNG file.
pub const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Width and height of a PNG (from its IHDR chunk).
pub fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if !png.starts_with(PNG_MAGIC) || png.len() < 24 || &png[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&png[16..20]), be(&png[20..24])))
}

/// A running headless Chromium with one page attached over CDP.
pub struct Browser {
    child: Child,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    port: u16,
    _profile: tempfile::TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("pid", &self.child.id())
            .field("port", &self.port)
            .finish()
    }
}

impl Browser {
    /// Starts Chromium with a `width`×`height` window and attaches to its
    /// first page (`about:blank`).
    pub async fn launch(bin: &Path, width: u32, height: u32) -> Result<Browser, BrowserError> {
        let profile = tempfile::tempdir()?;
        let mut args = base_args(profile.path(), width, height);
        args.push("--remote-debugging-address=127.0.0.1".into());
        args.push("--remote-debugging-port=0".into());
        args.push("about:blank".into());
        let log = profile.path().join("chromium.log");
        let mut child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .map_err(BrowserError::Spawn)?;

        // Chromium writes "<port>\n<browser ws path>" once it listens.
        let wait = Duration::from_secs(30);
        let deadline = Instant::now() + wait;
        let port_file = profile.path().join("DevToolsActivePort");
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u16>().ok()))
            {
                break p;
            }
            if let Ok(Some(st)) = child.try_wait() {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(BrowserError::Exited(format!("{st}: {tail}")));
            }
            if Instant::now() >= deadline {
                return Err(BrowserError::NoPort(wait));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        // The page target: GET /json/list, retried until the page shows up.
        let http = reqwest::Client::new();
        let ws_url = loop {
            let list: Result<Value, String> = async {
                http.get(format!("http://127.0.0.1:{port}/json/list"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            let page = list.as_ref().ok().and_then(|l| {
                l.as_array()?
                    .iter()
                    .find(|t| t["type"] == "page")?
                    .get("webSocketDebuggerUrl")?
                    .as_str()
                    .map(str::to_owned)
            });
            match (page, list) {
                (Some(u), _) => break u,
                (None, l) if Instant::now() >= deadline => {
                    return Err(BrowserError::Http(format!("no page target: {l:?}")));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str()).await?;
        let mut b = Browser {
            child,
            ws,
            next_id: 0,
            port,
            _profile: profile,
        };
        b.call("Page.enable", json!({})).await?;
        b.call("Runtime.enable", json!({})).await?;
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await?;
        Ok(b)
    }

    /// The DevTools HTTP port (on 127.0.0.1).
    pub fn devtools_port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// One CDP call: sends `method` with `params` and returns its `result`,
    /// skipping the events that arrive meanwhile.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(msg.to_string())).await?;
        let wait = async {
            while let Some(m) = self.ws.next().await {
                let text = match m? {
                    Message::Text(t) => t,
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                if v["id"].as_u64() != Some(id) {
                    continue;
                }
                if let Some(e) = v.get("error") {
                    return Err(BrowserError::Protocol {
                        method: method.to_owned(),
                        message: e.to_string(),
                    });
                }
                return Ok(v.get("result").cloned().unwrap_or(Value::Null));
            }
            Err(BrowserError::Protocol {
                method: method.to_owned(),
                message: "websocket closed".into(),
            })
        };
        tokio::time::timeout(CALL_TIMEOUT, wait)
            .await
            .map_err(|_| BrowserError::Timeout(method.to_owned()))?
    }

    /// Navigates to `url` and waits until the document has loaded.
    pub async fn goto(&mut self, url: &str) -> Result<(), BrowserError> {
        let r = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            return Err(BrowserError::Protocol {
                method: "Page.navigate".into(),
                message: e.to_owned(),
            });
        }
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(30),
        )
        .await
        .map(|_| ())
    }

    /// Evaluates a JavaScript expression in the page (promises awaited) and
    /// returns its value as JSON.
    pub async fn eval(&mut self, expression: &str) -> Result<Value, BrowserError> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            let text = ex
                .pointer("/exception/description")
                .and_then(Value::as_str)
                .or_else(|| ex.get("text").and_then(Value::as_str))
                .unwrap_or("exception");
            return Err(BrowserError::Script(text.to_owned()));
        }
        Ok(r.pointer("/result/value").cloned().unwrap_or(Value::Null))
    }

    /// Polls `expression` every 100 ms until it is truthy (not false, null,
    /// 0 or ""); returns that value.
    pub async fn wait_for(
        &mut self,
        expression: &str,
        timeout: Duration,
    ) -> Result<Value, BrowserError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.eval(expression).await;
            match &last {
                Ok(v) if truthy(v) => return last,
                _ if Instant::now() >= deadline => {
                    return Err(BrowserError::Timeout(format!(
                        "waiting for `{expression}` (last: {last:?})"
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The centre of the first element matching `selector`, in CSS pixels,
    /// scrolled into view.
    async fn centre(&mut self, selector: &str) -> Result<(f64, f64), BrowserError> {
        let sel = serde_json::to_string(selector).unwrap_or_default();
        let v = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return [r.left + r.width / 2, r.top + r.height / 2]; }})()"
            ))
            .await?;
        match (v[0].as_f64(), v[1].as_f64()) {
            (Some(x), Some(y)) => Ok((x, y)),
            _ => Err(BrowserError::NoElement(selector.to_owned())),
        }
    }

    /// Clicks the first element matching `selector` with real mouse events
    /// (pressed + released at its centre), as a user would.
    pub async fn click(&mut self, selector: &str) -> Result<(), BrowserError> {
        let (x, y) = self.centre(selector).await?;
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await?;
        }
        Ok(())
    }

    /// Replaces the value of the input matching `selector` with `text` by
    /// focusing it, selecting its content and typing (`input` events fire).
    pub async fn fill(&mut self, selector: &str, text: &str) -> Result<(), BrowserError> {
        self.click(selector).await?;
        let sel = serde_json::to_string(selector).unwrap_or_default();
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); e.focus(); e.select(); return true; }})()"
        ))
        .await?;
        self.call("Input.insertText", json!({"text": text})).await?;
        Ok(())
    }

    /// A PNG screenshot of the whole page, also written to `out`.
    pub async fn screenshot(&mut self, out: &Path) -> Result<Vec<u8>, BrowserError> {
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await?;
        let data = r["data"].as_str().unwrap_or_default();
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| BrowserError::Protocol {
                method: "Page.captureScreenshot".into(),
                message: e.to_string(),
            })?;
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, &png)?;
        Ok(png)
    }

    /// Closes the browser and waits for it to exit.
    pub async fn close(mut self) {
        let _ = self.call("Browser.close", json!({})).await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// JavaScript truthiness of a JSON value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
