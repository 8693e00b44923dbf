//! One file per subcommand, each with `pub fn run(args) -> anyhow::Result<()>`.
pub mod dump;
pub mod replay;
pub mod watch;
