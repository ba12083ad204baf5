//! Posts on their way to the sequencer, at an agent that is not the room's
//! sequencer: queued in order, sent up the room's upstream link, resent
//! after a failover (the sequencer drops what it has seen), answered when
//! the decision comes back, refused with `upstream_unavailable` when none
//! comes in time.

use super::frame::{Format, Out, Reason};
use super::member::Member;
use std::collections::VecDeque;
use std::sync::{Arc, Weak};

/// Posts waiting at most (more are refused at once).
pub const MAX_PENDING: usize = 10_000;

/// Where the decision on a post goes.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A client of this agent; `client_id` is its own id of the post.
    Local {
        member: Weak<Member>,
        client_id: Option<String>,
    },
    /// A downstream agent's link; `id` is the post's global id.
    Link { member: Weak<Member>, id: String },
}

impl Origin {
    /// The answer to send, and to whom.
    pub fn answer(
        &self,
        result: Result<u64, (Reason, u32)>,
    ) -> Option<(Arc<Member>, bytes::Bytes)> {
        let (member, payload) = match self {
            Origin::Local { member, client_id } => {
                let m = member.upgrade()?;
                let id = client_id.as_deref().unwrap_or("");
                let out = match result {
                    Ok(seq) => Out::Ack { id, seq },
                    Err((reason, retry_ms)) => Out::Nack {
                        id,
                        reason,
                        retry_ms,
                    },
                };
                let p = out.encode(m.format);
                (m, p)
            }
            Origin::Link { member, id } => {
                let m = member.upgrade()?;
                let out = match result {
                    Ok(seq) => Out::FwdAck { id, seq },
                    Err((reason, retry_ms)) => Out::FwdNack {
                        id,
                        reason,
                        retry_ms,
                    },
                };
                (m, out.encode(Format::Json))
            }
        };
        let frame = super::ws::data_frame(member.format, &payload);
        Some((member, frame))
    }
}

/// A post to be numbered.
#[derive(Debug, Clone)]
pub struct Post {
    /// Globally unique: the sequencer's dedupe key.
    pub id: String,
    pub user: Arc<str>,
    pub text: Arc<str>,
    pub origin: Origin,
}

impl Post {
    /// The `fwd` message sent upstream.
    pub fn fwd_json(&self) -> String {
        serde_json::json!({"t": "fwd", "id": self.id, "u": &*self.user, "x": &*self.text})
            .to_string()
    }
}

#[derive(Debug)]
struct Pending {
    post: Post,
    queued_ms: u64,
    sent: bool,
}

/// The queue of one room.
#[derive(Debug, Default)]
pub struct Forwards {
    queue: VecDeque<Pending>,
}

impl Forwards {
    /// Queues `post`; gives it back when the queue is full.
    pub fn push(&mut self, post: Post, now_ms: u64) -> Result<(), Post> {
        if self.queue.len() >= MAX_PENDING {
            return Err(post);
        }
        self.queue.push_back(Pending {
            post,
            queued_ms: now_ms,
            sent: false,
        });
        Ok(())
    }

    /// Posts not sent on the current link, marked sent.
    pub fn take_unsent(&mut self) -> Vec<Post> {
        self.queue
            .iter_mut()
            .filter(|p| !p.sent)
            .map(|p| {
                p.sent = true;
                p.post.clone()
            })
            .collect()
    }

    /// A new link: everything undecided goes again.
    pub fn resend_all(&mut self) {
        for p in &mut self.queue {
            p.sent = false;
        }
    }

    /// The post the decision on `id` is for.
    pub fn decided(&mut self, id: &str) -> Option<Post> {
        let i = self.queue.iter().position(|p| p.post.id == id)?;
        self.queue.remove(i).map(|p| p.post)
    }

    /// Posts waiting longer than `timeout_ms`.
    pub fn expired(&mut self, now_ms: u64, timeout_ms: u64) -> Vec<Post> {
        let mut out = Vec::new();
        while let Some(p) = self.queue.front() {
            if now_ms.saturating_sub(p.queued_ms) < timeout_ms {
                break;
            }
            if let Some(p) = self.queue.pop_front() {
                out.push(p.post);
            }
        }
        out
    }

    /// Every post (the room now sequences itself).
    pub fn drain(&mut self) -> Vec<Post> {
        self.queue.drain(..).map(|p| p.post).collect()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(id: &str) -> Post {
        Post {
            id: id.into(),
            user: Arc::from("u"),
            text: Arc::from("x"),
            origin: Origin::Local {
                member: Weak::new(),
                client_id: None,
            },
        }
    }

    #[test]
    fn queue_sends_once_per_link_and_expires_in_order() {
        let mut f = Forwards::default();
        f.push(post("a"), 0).unwrap();
        f.push(post("b"), 10).unwrap();
        assert_eq!(f.take_unsent().len(), 2);
        assert!(f.take_unsent().is_empty());
        f.resend_all();
        let ids: Vec<String> = f.take_unsent().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(f.decided("a").is_some());
        assert!(f.decided("a").is_none());
        assert_eq!(f.expired(5000, 10_000).len(), 0);
        assert_eq!(f.expired(10_010, 10_000).len(), 1);
        assert!(f.is_empty());
        let v = serde_json::from_str::<serde_json::Value>(&post("q\"").fwd_json()).unwrap();
        assert_eq!(v["id"], "q\"");
    }
}
