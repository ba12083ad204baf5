//! Publish authorisation (issue 17, docs/security.md): before a publisher
//! is admitted, the publish policy the scheduler sends in every route
//! table ([`PublishPolicy`]) decides, per app, whether it needs
//!
//! * a publish token (JWT HS256 signed with one of the policy's keys, see
//!   [`vantage_shared::publish_token`]): HTTP-FLV `?token=` or
//!   `Authorization: Bearer`, RTMP `name?token=`;
//! * the operator's `on_publish` webhook to answer 2xx (SRS and
//!   nginx-rtmp convention: a JSON POST naming the app, stream, query and
//!   client; anything else, or no answer in time, refuses);
//! * nothing (open: `--dev`'s default, warned about by the scheduler).
//!
//! Without a policy (no route table yet, or one from a scheduler that sent
//! none) nobody may publish. Refusals are counted in
//! `relay_publishes_total{result="unauthorized"}`.

use super::Relay;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tracing::{debug, warn};
use vantage_proto::v1::{PublishAuth, PublishPolicy};
use vantage_shared::publish_token::{self, SigningKey, TokenError};
use vantage_shared::stream::StreamKey;

/// What a publisher presented.
#[derive(Debug, Clone, Default)]
pub struct Credential {
    /// The publish token, when one was given.
    pub token: Option<String>,
    /// The request's query string with its `?` (empty without one), passed
    /// to the webhook as `param`.
    pub param: String,
    pub peer: Option<SocketAddr>,
}

impl Credential {
    /// The credential of a request for `?query` with an optional bearer
    /// header value.
    pub fn from_query(query: Option<&str>, bearer: Option<&str>, peer: Option<SocketAddr>) -> Self {
        let token = query
            .and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("token="))
                    .map(str::to_owned)
            })
            .or_else(|| bearer.map(|b| b.trim().to_owned()))
            .filter(|t| !t.is_empty());
        Credential {
            token,
            param: query.map(|q| format!("?{q}")).unwrap_or_default(),
            peer,
        }
    }
}

/// Why a publisher was not authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credential, or one that is not valid (HTTP 401).
    Unauthenticated(String),
    /// A valid credential that does not allow this stream, or the webhook
    /// said no (HTTP 403).
    Forbidden(String),
}

impl Denied {
    pub fn message(&self) -> &str {
        match self {
            Denied::Unauthenticated(m) | Denied::Forbidden(m) => m,
        }
    }
}

/// What the policy asks of a publisher of `key`.
fn rule<'a>(policy: &'a PublishPolicy, key: &StreamKey) -> (PublishAuth, &'a str) {
    let app = key.as_str().split('/').next().unwrap_or_default();
    match policy.apps.iter().find(|r| r.app == app) {
        Some(r) => (
            PublishAuth::try_from(r.auth).unwrap_or(PublishAuth::Unspecified),
            if r.webhook_url.is_empty() {
                &policy.webhook_url
            } else {
                &r.webhook_url
            },
        ),
        None => (
            PublishAuth::try_from(policy.auth).unwrap_or(PublishAuth::Unspecified),
            &policy.webhook_url,
        ),
    }
}

/// Checks a token credential (pure: `now_s` is unix seconds).
pub fn check_token(
    policy: &PublishPolicy,
    key: &StreamKey,
    cred: &Credential,
    now_s: i64,
) -> Result<(), Denied> {
    let Some(token) = &cred.token else {
        return Err(Denied::Unauthenticated(format!(
            "publishing {key} needs a publish token (?token= or Authorization: Bearer)"
        )));
    };
    let keys: Vec<SigningKey> = policy
        .keys
        .iter()
        .map(|k| SigningKey {
            id: k.id.clone(),
            secret: k.secret.clone(),
        })
        .collect();
    match publish_token::verify(token, &keys, key, now_s) {
        Ok(_) => Ok(()),
        Err(e @ TokenError::Scope { .. }) => Err(Denied::Forbidden(e.to_string())),
        Err(e) => Err(Denied::Unauthenticated(format!(
            "publish token refused: {e}"
        ))),
    }
}

const WEBHOOK_DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks the operator's `on_publish` webhook at `url` (http:// only).
async fn ask_webhook(url: &str, timeout: Duration, body: serde_json::Value) -> Result<(), Denied> {
    let refused = |why: String| Denied::Forbidden(format!("on_publish webhook: {why}"));
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| refused(format!("bad URL {url:?}: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(refused(format!("{url:?} is not an http:// URL")));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| refused(format!("{url:?} has no host")))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let work = async {
        let tcp = TcpStream::connect((authority.host(), authority.port_u16().unwrap_or(80)))
            .await
            .map_err(|e| refused(format!("connect {authority}: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| refused(e.to_string()))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "webhook connection ended");
            }
        });
        let req = Request::post(path)
            .header(hyper::header::HOST, authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .map_err(|e| refused(e.to_string()))?;
        let resp = sender.send_request(req).await;
        driver.abort();
        let resp = resp.map_err(|e| refused(e.to_string()))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(refused(format!("answered {}", resp.status())))
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(refused(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// Longest a publisher waits for this agent's first publish policy (an
/// agent that just started, before its first route table).
const POLICY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Relay {
    /// Decides whether the publisher of `key` presenting `cred` may publish
    /// over `protocol` (`http-flv`, `rtmp`); counts and logs a refusal.
    pub(crate) async fn authorize_publish(
        &self,
        key: &StreamKey,
        cred: &Credential,
        protocol: &'static str,
    ) -> Result<(), Denied> {
        // An agent that just started may not hold a table yet: a publisher
        // that connects then waits for the policy (bounded) rather than
        // being refused at once.
        let mut tables = self.inner.tables.clone();
        let policy = match tokio::time::timeout(
            POLICY_WAIT,
            tables.wait_for(|t| t.as_ref().is_some_and(|t| t.table.publish.is_some())),
        )
        .await
        {
            Ok(Ok(t)) => t.as_ref().and_then(|t| t.table.publish.clone()),
            _ => None,
        };
        let result = match &policy {
            None => Err(Denied::Forbidden(
                "this agent has received no publish policy from the scheduler (waited 5 s); retry shortly".to_owned(),
            )),
            Some(policy) => match rule(policy, key) {
                (PublishAuth::Open, _) => Ok(()),
                (PublishAuth::Token, _) => {
                    check_token(policy, key, cred, vantage_shared::clock::now_ms() / 1000)
                }
                (PublishAuth::Webhook, url) => {
                    let (app, stream) = key.as_str().split_once('/').unwrap_or((key.as_str(), ""));
                    let timeout = match policy.webhook_timeout_ms {
                        0 => WEBHOOK_DEFAULT_TIMEOUT,
                        ms => Duration::from_millis(u64::from(ms)),
                    };
                    let body = serde_json::json!({
                        "action": "on_publish",
                        "app": app,
                        "stream": stream,
                        "param": cred.param,
                        "client_ip": cred.peer.map(|p| p.ip().to_string()),
                        "node_id": self.node_id(),
                        "protocol": protocol,
                    });
                    ask_webhook(url, timeout, body).await
                }
                (PublishAuth::Unspecified, _) => Err(Denied::Forbidden(
                    "the publish policy names no way to publish this app".to_owned(),
                )),
            },
        };
        if let Err(d) = &result {
            self.metrics().publish("unauthorized");
            warn!(stream = %key, protocol, peer = ?cred.peer, "publish refused: {}", d.message());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vantage_proto::v1::{AppPublishRule, PublishKey};
    use vantage_shared::stream::StreamPattern;

    const NOW: i64 = 1_700_000_000;

    fn policy() -> PublishPolicy {
        PublishPolicy {
            auth: PublishAuth::Token as i32,
            keys: vec![PublishKey {
                id: "k1".into(),
                secret: vec![9; 32],
            }],
            apps: vec![AppPublishRule {
                app: "open".into(),
                auth: PublishAuth::Open as i32,
                webhook_url: String::new(),
            }],
            ..PublishPolicy::default()
        }
    }

    fn token(pattern: &str) -> String {
        let key = SigningKey {
            id: "k1".into(),
            secret: vec![9; 32],
        };
        publish_token::issue(&key, &StreamPattern::parse(pattern).unwrap(), NOW, 600)
    }

    #[test]
    fn tokens_come_from_the_query_or_the_bearer_header() {
        let c = Credential::from_query(Some("a=1&token=xyz"), Some("other"), None);
        assert_eq!(c.token.as_deref(), Some("xyz"));
        assert_eq!(c.param, "?a=1&token=xyz");
        let c = Credential::from_query(None, Some(" abc "), None);
        assert_eq!(c.token.as_deref(), Some("abc"));
        assert_eq!(
            Credential::from_query(Some("token="), None, None).token,
            None
        );
    }

    #[test]
    fn token_rules_per_app() {
        let p = policy();
        let cam = StreamKey::parse("live/cam").unwrap();
        let cred = |t: Option<String>| Credential {
            token: t,
            ..Credential::default()
        };
        assert!(matches!(
            check_token(&p, &cam, &cred(None), NOW),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            check_token(&p, &cam, &cred(Some("a.b.c".into())), NOW),
            Err(Denied::Unauthenticated(_))
        ));
        assert_eq!(
            check_token(&p, &cam, &cred(Some(token("live/cam"))), NOW),
            Ok(())
        );
        assert!(matches!(
            check_token(&p, &cam, &cred(Some(token("live/other"))), NOW),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            check_token(&p, &cam, &cred(Some(token("live/cam"))), NOW + 3_600),
            Err(Denied::Unauthenticated(_))
        ));
        assert_eq!(rule(&p, &cam).0, PublishAuth::Token);
        assert_eq!(
            rule(&p, &StreamKey::parse("open/x").unwrap()).0,
            PublishAuth::Open
        );
    }
}
