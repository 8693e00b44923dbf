//! `introspect record`: a watch for a fixed time whose outputs land in a directory: the JSON
//! lines, the summary, and flame graphs of the slow requests (all, on-CPU, off-CPU, per route).
use std::{
    fs::{self, File},
    io::{BufRead, BufReader, BufWriter},
    path::Path,
};

use anyhow::Context as _;

use crate::{
    cli::{RecordArgs, WatchArgs},
    cmd::watch,
    flame::{self, Flames, Kind},
};

fn write(path: &Path, bytes: impl AsRef<[u8]>) -> anyhow::Result<()> {
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Writes the flame graphs of `flames` into `dir`.
pub fn write_graphs(dir: &Path, flames: &Flames) -> anyhow::Result<()> {
    let wall = flames.folded(Kind::Wall, None);
    write(&dir.join("slow.folded"), wall.iter().map(|l| format!("{l}\n")).collect::<String>())?;
    write(&dir.join("slow.svg"), flame::svg(&wall, "slow requests: on-CPU and off-CPU [off-cpu]")?)?;
    write(&dir.join("cpu.svg"), flame::svg(&flames.folded(Kind::Cpu, None), "slow requests: on-CPU")?)?;
    write(&dir.join("offcpu.svg"), flame::svg(&flames.folded(Kind::Offcpu, None), "slow requests: off-CPU")?)?;
    let routes = dir.join("routes");
    fs::create_dir_all(&routes).with_context(|| format!("creating {}", routes.display()))?;
    for route in flames.routes() {
        let folded = flames.folded(Kind::Wall, Some(&route));
        write(&routes.join(format!("{}.svg", flame::slug(&route))), flame::svg(&folded, &format!("{route}: on-CPU and off-CPU [off-cpu]"))?)?;
    }
    Ok(())
}

pub fn run(args: RecordArgs) -> anyhow::Result<()> {
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let events_path = args.out.join("events.jsonl");
    let events = File::create(&events_path).with_context(|| format!("creating {}", events_path.display()))?;
    let wargs = WatchArgs {
        target: args.target,
        reporting: args.reporting,
        duration: Some(args.duration),
        keep_query: args.keep_query,
        record: None,
        flamegraph: None,
        bpf_stats: false,
        without: Vec::new(),
        poll_interval: None,
    };
    let flames = watch::watch(&wargs, Box::new(BufWriter::new(events)), true)?.unwrap_or_default();
    // The summary is the last line of the events.
    let summary = BufReader::new(File::open(&events_path)?)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.starts_with(r#"{"type":"summary""#))
        .last()
        .context("the watch wrote no summary")?;
    let value: serde_json::Value = serde_json::from_str(&summary)?;
    write(&args.out.join("summary.json"), serde_json::to_string_pretty(&value)? + "\n")?;
    write_graphs(&args.out, &flames)?;
    eprintln!(
        "introspect: wrote {0}/events.jsonl, summary.json, slow.folded, slow.svg, cpu.svg, offcpu.svg and routes/ ({1} route graphs)",
        args.out.display(),
        flames.routes().len()
    );
    Ok(())
}
