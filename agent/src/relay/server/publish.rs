//! `POST`/`PUT /{app}/{stream}.flv`: a publisher feeding a stream on this
//! node, and the guard that ends the stream when the publisher goes.

use super::*;

impl Relay {
    #[instrument(name = "publish", skip_all, fields(stream = %key, %peer))]
    pub(super) async fn publish(
        &self,
        req: Request<Incoming>,
        key: StreamKey,
        peer: SocketAddr,
    ) -> Resp {
        let Ok((stream, generation, cancel)) = self.stream_for_publish(&key) else {
            self.metrics().publish("conflict");
            return error(
                StatusCode::CONFLICT,
                format!("stream {key} is already being published to this node"),
            );
        };
        self.metrics().publish("accepted");
        info!("publish started");
        let mut body = req.into_body();
        let mut session = Session::new(self.config().max_tag_bytes);
        let timeouts = Timeouts {
            first: self.config().publish_timeout,
            stall: self.config().publish_timeout,
            coalesce: self.config().write_coalesce,
        };
        let stop = async {
            cancel.cancelled().await;
            Stop::Cancelled
        };
        // hyper drops this future when the publisher closes its connection
        // without waiting for the answer: the guard still ends the stream.
        let guard = PublishGuard {
            relay: self,
            stream: stream.clone(),
            generation,
            finished: false,
        };
        let end = source::drive(&stream, generation, &mut session, &mut body, timeouts, stop).await;
        guard.finish();
        let tags = session.tags;
        let (status, result, msg) = match end {
            End::Eof => match session.finish() {
                Ok(()) => (StatusCode::OK, "ended", "publish ended".to_owned()),
                Err(e) => (
                    StatusCode::OK,
                    "ended",
                    format!("publish ended inside a tag ({e})"),
                ),
            },
            End::Malformed(e) => {
                self.metrics().malformed(e.label());
                warn!(error = %e, "malformed FLV from publisher: publish refused");
                drain(&mut body).await;
                (
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    format!("malformed FLV from publisher after {tags} tags: {e}"),
                )
            }
            End::Body(e) => (
                StatusCode::BAD_REQUEST,
                "error",
                format!("publish connection failed: {e}"),
            ),
            End::Stall(d) => (
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("no data from the publisher for {} ms", d.as_millis()),
            ),
            End::Stopped(_) | End::Replaced => (
                StatusCode::SERVICE_UNAVAILABLE,
                "error",
                "the relay is shutting down".to_owned(),
            ),
        };
        self.metrics().publish(result);
        info!(tags, result, "publish finished");
        if status == StatusCode::OK {
            json(status, &serde_json::json!({ "status": msg, "tags": tags }))
        } else {
            error(status, msg)
        }
    }
}

/// Ends a published stream when its publish handler ends or is dropped.
struct PublishGuard<'a> {
    relay: &'a Relay,
    stream: Arc<crate::relay::stream::Stream>,
    generation: u64,
    finished: bool,
}

impl PublishGuard<'_> {
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for PublishGuard<'_> {
    fn drop(&mut self) {
        if self.stream.end_source(self.generation, Phase::Ended) {
            self.relay.remove(&self.stream);
        }
        if !self.finished {
            self.relay.metrics().publish("closed");
            info!(stream = %self.stream.key, "publisher went away");
        }
    }
}
