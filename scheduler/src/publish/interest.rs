//! Directory subscriptions from route streams (`RouteRequest.subscribe` /
//! `unsubscribe`): keys checked, the plan's subscriptions changed
//! ([`vantage_plan::PlanSession::subscribe`]), and a table whose version
//! moved announced to its stream at once — no planning step is needed.

use crate::app::App;
use crate::metrics::KindLabel;
use tracing::{debug, warn};
use vantage_shared::clock::now_ms;
use vantage_shared::stream::StreamKey;

/// Most keys one request may subscribe or unsubscribe (an agent sends
/// larger sets in several requests); the rest are refused.
pub const MAX_KEYS_PER_REQUEST: usize = 10_000;

/// Applies one request's subscription changes for `node_id` (`replace`:
/// the first request of a stream, whose `subscribe` list is every key the
/// agent wants).
pub async fn apply(
    app: &App,
    node_id: &str,
    subscribe: &[String],
    unsubscribe: &[String],
    replace: bool,
) {
    if !replace && subscribe.is_empty() && unsubscribe.is_empty() {
        return;
    }
    let count = |kind: &str, n: usize| {
        if n > 0 {
            app.metrics
                .stream_subscriptions
                .get_or_create(&KindLabel {
                    kind: kind.to_owned(),
                })
                .inc_by(n as u64);
        }
    };
    let mut invalid = 0;
    let mut parse = |keys: &[String]| -> Vec<StreamKey> {
        keys.iter()
            .take(MAX_KEYS_PER_REQUEST)
            .filter_map(|k| {
                let key = StreamKey::parse(k).ok();
                invalid += usize::from(key.is_none());
                key
            })
            .collect()
    };
    let add = parse(subscribe);
    let remove = parse(unsubscribe);
    let over = subscribe.len().saturating_sub(MAX_KEYS_PER_REQUEST)
        + unsubscribe.len().saturating_sub(MAX_KEYS_PER_REQUEST);
    if invalid > 0 || over > 0 {
        warn!(
            node_id,
            invalid,
            over,
            "directory subscriptions not taken (invalid keys, or over the per-request limit)"
        );
    }
    let (done, version, hash, held) = {
        let mut plan = app.plan.write().await;
        let done = plan.subscribe(node_id, &add, &remove, replace);
        (
            done,
            plan.version(node_id),
            plan.content_hash(node_id),
            plan.subscription_count(),
        )
    };
    count("added", done.added);
    count("removed", done.removed);
    count("invalid", invalid);
    count("refused", done.refused + over);
    app.metrics
        .stream_subscribed
        .set(i64::try_from(held).unwrap_or(i64::MAX));
    if done.refused > 0 {
        warn!(
            node_id,
            refused = done.refused,
            limit = vantage_plan::session::MAX_INTEREST,
            "directory subscriptions over the per-node limit not taken"
        );
    }
    debug!(
        node_id,
        added = done.added,
        removed = done.removed,
        version = done.version,
        "subscriptions"
    );
    if done.version > 0 {
        app.publisher.published(node_id, version, hash, now_ms());
    }
}
