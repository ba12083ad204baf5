//! Everything the Vantage scheduler, agent and simulator must agree on.
//!
//! * [`score`] — the weighted QoE formula of DESIGN §5: normalisation ranges,
//!   weights, eligibility and an explanation of every term.
//! * [`estimate`] — EWMA, windowed percentiles, loss and RFC 3550 jitter.
//! * [`frame`] — length-delimited protobuf framing with a size limit.
//! * [`place`] — coordinates, great-circle distance and the RTT-from-distance model.
//! * [`stream`] — stream keys (`app/stream`) and patterns (`live/*`).
//! * [`auth`] — enrollment tokens and per-node credentials.
//! * [`comment_token`] — signed tokens of live comments (posters, agent links).
//! * [`publish_token`] — publish tokens (JWT HS256): issue and verify.
//! * [`ratelimit`] — token buckets per client (IP prefix), bounded.
//! * [`tls`] — development CA, certificate loading and peer identities.
//! * [`backoff`] — jittered exponential backoff with a cap.
//! * [`close`] — QUIC application error codes of the telemetry connection.
//! * [`validate`] — range checks of reported values.
//! * [`clock`] — wall-clock milliseconds, the only clock pure code is given.
//! * [`probe`] — the authenticated UDP probe packet (TWAMP-light style).
//! * [`group`] — client groups: geohash cell and ASN.
//! * [`flv`] — FLV tags, incremental demuxer and muxer; [`synth`] — a synthetic FLV source.
//! * [`rtmp`] — RTMP handshake, chunk stream (bounded decoder, encoder), messages and AMF0 commands.
//! * [`cmcd`] — CTA-5004 (CMCD v1) player data from queries, headers and JSON beacons.
//! * [`listen`] — connection limits of TCP listeners: cap, proof and idle
//!   deadlines, shedding unproven connections, `accept` back-off on `EMFILE`.
//! * [`table_view`] — the JSON view of a route table, the same on the scheduler and the agent;
//!   [`table_delta`] — the delta between two whole tables (what a follower replica sends).
//!
//! Pure code here never reads the clock itself: callers pass `now`.
#![forbid(unsafe_code)]

pub mod auth;
pub mod backoff;
pub mod clock;
pub mod close;
pub mod cmcd;
pub mod comment_token;
pub mod estimate;
pub mod flv;
pub mod frame;
pub mod group;
pub mod listen;
pub mod place;
pub mod probe;
pub mod publish_token;
pub mod ratelimit;
pub mod rtmp;
pub mod score;
pub mod stream;
pub mod synth;
pub mod table_delta;
pub mod table_view;
pub mod tcp;
pub mod tls;
pub mod validate;
