//! Running: the pure pipeline ([`pipeline`]), the live host it asks what only the machine knows
//! ([`host`]), and the watch loop that drains the kernel into them ([`live`], [`pace`]).
pub mod activity;
pub mod backlog;
pub mod deadlines;
pub mod forbid;
pub mod host;
pub mod live;
pub mod pace;
pub mod pglink;
pub mod pipeline;
