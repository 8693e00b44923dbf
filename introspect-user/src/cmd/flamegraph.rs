//! `introspect flamegraph`: flame graphs rebuilt offline from recorded JSON lines.
use std::{
    fs::File,
    io::{BufRead, BufReader},
};

use anyhow::Context as _;

use crate::{
    UsageError,
    cli::FlamegraphArgs,
    output::{flame, route},
    stacks::profile::ProfileEntry,
};

/// The slow requests' profiles in a JSON-lines file, as `flame::Flames`.
pub fn load(path: &std::path::Path) -> anyhow::Result<flame::Flames> {
    let file = File::open(path).map_err(|e| UsageError(format!("cannot open {}: {e}", path.display())))?;
    let mut flames = flame::Flames::default();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| UsageError(format!("{}:{}: not a JSON line ({e})", path.display(), n + 1)))?;
        if v["type"] != "request" || v["profile"].is_null() {
            continue;
        }
        let profile: Vec<ProfileEntry> =
            serde_json::from_value(v["profile"].clone()).with_context(|| format!("{}:{}: profile", path.display(), n + 1))?;
        let (method, path_s) = (v["method"].as_str().unwrap_or("?"), v["path"].as_str().unwrap_or("?"));
        flames.add(method, &route::normalize(path_s), &profile);
    }
    Ok(flames)
}

pub fn run(args: FlamegraphArgs) -> anyhow::Result<()> {
    let flames = load(&args.events)?;
    let folded = flames.folded(args.kind, args.route.as_deref());
    if args.route.is_some() && folded.is_empty() {
        return Err(UsageError(format!("no profiles for route {:?} in {}", args.route.unwrap_or_default(), args.events.display())).into());
    }
    let bytes = if args.folded {
        flame::folded_text(&folded).into_bytes()
    } else {
        let title = match &args.route {
            Some(r) => format!("{r}: {:?}", args.kind),
            None => format!("slow requests: {:?}", args.kind),
        };
        flame::svg(&folded, &title)?
    };
    std::fs::write(&args.output, bytes).with_context(|| format!("writing {}", args.output.display()))?;
    Ok(())
}
