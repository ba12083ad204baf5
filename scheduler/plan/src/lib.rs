//! The Vantage planning core: everything that decides routes, shared by
//! the scheduler and the simulator, without I/O (no sockets, no database,
//! no clock: `now` is an argument; the one exception is
//! [`trace::Trace::load`], which reads trace files).
//!
//! * [`node`] — what the planner knows of a node ([`NodeView`]);
//! * [`inputs`] — smoothing and the deadband between telemetry and plans;
//! * [`smoothing`] — reports to fresh inputs (path and load EWMAs), as the
//!   scheduler's registry and the simulator's view of telemetry apply it;
//! * [`edge`] — the QoE score of one node serving another;
//! * [`liveness`] — up, suspect, down from report age;
//! * [`resolve`] — viewer routing: ranking edges for a viewer, learning
//!   per client group;
//! * [`session`] — [`PlanSession`], the plan's state and the one object
//!   that changes it, step by step (incrementally where it can);
//! * [`settings`] — weights, ranges, limits and the rest of what a plan is
//!   made with;
//! * [`trace`] — scheduler traces: the format, capturing a step, reading a
//!   trace directory and replaying its steps through a [`PlanSession`].
//!
//! Internals: `graph` (indexed nodes and relay candidates), `source`
//! (path costs and routes of one origin or pattern), `par` (scoped
//! threads).

#![forbid(unsafe_code)]

pub mod edge;
mod graph;
pub mod inputs;
pub mod liveness;
pub mod node;
mod par;
pub mod resolve;
pub mod session;
pub mod settings;
pub mod smoothing;
mod source;
pub mod trace;

pub use node::{Health, NodeView, PathStat, eligible};
pub use session::{
    Offered, OriginConflict, PlanSession, RouteEntry, StepReport, TableChange, TableUpdate,
};
pub use settings::{Limits, PlanSettings};
pub use source::SourceKey;
