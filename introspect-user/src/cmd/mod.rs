//! One file per subcommand, each with `pub fn run(args) -> anyhow::Result<()>`.
pub mod dump;
pub mod flamegraph;
pub mod record;
pub mod replay;
pub mod top;
pub mod watch;
