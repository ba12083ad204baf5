//! Joining: the Hello's checks and admission, the Welcome once the store
//! has the node, or a typed rejection delivered before the close.

use super::*;
use crate::registry::Connection as NodeConnection;
use std::sync::Arc;

impl Session {
    pub(super) fn hello(
        &mut self,
        cx: &Ctx<'_>,
        conn: &mut Connection,
        first: AgentControl,
    ) -> Result<(), Refusal> {
        let Some(agent_control::Kind::Hello(hello)) = first.kind.clone() else {
            return Err(refusal(
                CloseCode::ProtocolViolation,
                "first control message is not Hello",
            ));
        };
        if let Err((reason, detail)) = check_hello(&hello) {
            return self.reject(cx, conn, reason, detail);
        }
        let peer_cn = conn
            .crypto_session()
            .peer_identity()
            .and_then(|id| {
                id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|certs| certs.first().and_then(vantage_shared::tls::peer_node_id));
        let admission = cx.app.auth.admit(&hello, peer_cn.as_deref());
        // Several replicas: a node another replica enrolled (or whose
        // enrollment raced ours) is known to the store, not yet here.
        let ask_store = match &admission {
            Ok(Admission::Enroll(_)) => true,
            Err(r) => {
                matches!(r.reason, RejectReason::UnknownNode | RejectReason::BadToken)
                    && !hello.node_credential.is_empty()
            }
            Ok(Admission::Known) => false,
        };
        if ask_store && cx.app.cluster.replicated() && !self.looked_up {
            let store = cx.app.store.clone();
            let links = cx.links.clone();
            let conn_id = self.id;
            let node_id = hello.node_id.clone();
            tokio::spawn(async move {
                let result = store.load_node(&node_id).await.map_err(|e| e.to_string());
                links.send(Command::LookedUp {
                    conn: conn_id,
                    result,
                });
            });
            self.looking_up = Some(first);
            self.phase = Phase::LookingUp;
            self.deadline = None;
            return Ok(());
        }
        let admission = match admission {
            Ok(a) => a,
            Err(refusal) => return self.reject(cx, conn, refusal.reason, refusal.detail),
        };
        cx.app.observe_agent_term(hello.route_term);
        let node_id = hello.node_id.clone();
        let session_id = hex::encode(rand::random::<[u8; 8]>());
        let now = now_ms();
        let info = node_info(&hello);
        let mut credential = String::new();
        let mut superseded: Option<Arc<dyn NodeConnection>> = None;
        let link = SessionLink {
            conn: self.id,
            links: cx.links.clone(),
        };
        cx.app.registry.upsert(
            &node_id,
            || NodeEntry::new(node_id.clone(), info.clone(), now),
            |e| {
                e.info = info.clone();
                if let Admission::Enroll(c) = &admission {
                    e.credential_hash = Some(hash_secret(&c.secret));
                    e.enrolled_at_ms = now;
                    credential = c.encode();
                }
                superseded = e.session.take().and_then(|s| s.connection);
                e.session = Some(RegistrySession {
                    id: session_id.clone(),
                    started_ms: now,
                    remote: self.remote.to_string(),
                    connection: Some(Arc::new(link)),
                });
            },
        );
        if let Some(old) = superseded {
            old.close(
                CloseCode::Superseded,
                "a newer session of this node replaced this one",
            );
        }
        self.joining = Some(Joining {
            node_id: node_id.clone(),
            session_id,
            credential,
            info,
            agent_version: hello.agent_version.clone(),
            held_route_version: hello.route_version,
        });
        self.phase = Phase::Admitting;
        self.deadline = None;
        let Some(rec) = cx.app.registry.with(&node_id, NodeEntry::to_record) else {
            self.welcome(cx, conn);
            return Ok(());
        };
        if matches!(admission, Admission::Enroll(_)) {
            // Enrollment must be durable before the agent is told its
            // credential: the store answers through the command queue.
            let store = cx.app.store.clone();
            let links = cx.links.clone();
            let conn_id = self.id;
            tokio::spawn(async move {
                let result = match store.enroll_node(&rec).await {
                    Ok(true) => Enrolled::Done,
                    Ok(false) => Enrolled::Duplicate(store.load_node(&rec.id).await.ok().flatten()),
                    Err(e) => Enrolled::Failed(e.to_string()),
                };
                links.send(Command::Admitted {
                    conn: conn_id,
                    result,
                });
            });
        } else {
            cx.app.store.record(crate::store::WriteOp::NodeInfo(rec));
            self.welcome(cx, conn);
        }
        Ok(())
    }

    pub(super) fn welcome(&mut self, cx: &Ctx<'_>, conn: &mut Connection) {
        let Some(j) = self.joining.take() else { return };
        let app = cx.app;
        self.node_id = Some(j.node_id.clone());
        app.metrics.telemetry_sessions.inc();
        let welcome = SchedulerControl {
            kind: Some(scheduler_control::Kind::Welcome(Welcome {
                session_id: j.session_id.clone(),
                report_interval_ms: app.report_interval_ms(),
                scheduler_id: app.config.scheduler_id.clone(),
                node_credential: j.credential.clone(),
                max_frame_bytes: app.config.max_frame_bytes as u32,
                role: app.cluster.role().as_str().to_owned(),
                term: app.cluster.term(),
            })),
        };
        self.control_out.extend_from_slice(&frame::encode(&welcome));
        if let Err((code, reason)) = self.flush_control(conn) {
            return self.close(cx, conn, code, reason);
        }
        info!(
            node_id = j.node_id,
            session_id = j.session_id,
            remote = %self.remote,
            enrolled = !j.credential.is_empty(),
            agent_version = j.agent_version,
            held_route_version = j.held_route_version,
            "agent joined"
        );
        if !j.credential.is_empty() {
            app.event(&j.node_id, "enrolled", &self.remote.to_string());
        }
        if let Some(r) = &app.recorder {
            r.node(
                now_ms(),
                &j.node_id,
                "connect",
                &j.session_id,
                Some(&j.info),
            );
        }
        app.trigger_replan();
        self.phase = Phase::Telemetry;
        self.deadline = Some(cx.now + HELLO_TIMEOUT);
        // Frames that came in while the store was busy.
        self.pump(cx, conn);
    }

    /// Sends a typed rejection, then closes once the agent has it (or after
    /// [`REJECT_LINGER`]).
    pub(super) fn reject(
        &mut self,
        cx: &Ctx<'_>,
        conn: &mut Connection,
        reason: RejectReason,
        detail: String,
    ) -> Result<(), Refusal> {
        debug!(remote = %self.remote, ?reason, "hello rejected");
        let msg = SchedulerControl {
            kind: Some(scheduler_control::Kind::Rejection(Rejection {
                reason: reason as i32,
                detail: detail.clone(),
            })),
        };
        self.control_out.extend_from_slice(&frame::encode(&msg));
        self.rejection = Some((CloseCode::from_reject(reason), detail));
        self.phase = Phase::Rejecting;
        self.deadline = Some(cx.now + REJECT_LINGER);
        let sent = self.flush_control(conn).is_ok()
            && self.control_out.is_empty()
            && self
                .control
                .id
                .is_some_and(|id| conn.send_stream(id).finish().is_ok());
        if !sent {
            self.deliver_rejection(cx, conn);
        }
        Ok(())
    }

    pub(super) fn deliver_rejection(&mut self, cx: &Ctx<'_>, conn: &mut Connection) {
        if let Some((code, detail)) = self.rejection.take() {
            self.close(cx, conn, code, detail);
        }
    }
}
