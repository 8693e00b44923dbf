//! Stacks of slow requests: frames, symbolization, userspace snapshots, per-request profiles,
//! and the CPython reader.
pub mod frame;
pub mod hot;
pub mod profile;
pub mod python;
pub mod snapshot;
pub mod symbolize;

pub use frame::{Frame, FrameKind, RawFrame};
