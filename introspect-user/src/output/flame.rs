//! Flame graphs of slow requests: their profiles folded into `frame;frame;... weight` lines
//! (root first, the route as the root frame, weights in microseconds), rendered with inferno.
//! The same folding serves live runs (`record`, `watch --flamegraph`) and recorded events
//! (`introspect flamegraph EVENTS.jsonl`).
use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
};

use super::{Completed, Sink, State, files::OutDir, route};
use crate::stacks::{Frame, FrameKind, profile::ProfileEntry};

/// Which time a graph shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// On-CPU samples only.
    Cpu,
    /// Off-CPU waits only.
    Offcpu,
    /// Both, off-CPU frames marked with a ` [off-cpu]` suffix.
    Wall,
}

/// The suffix that tells off-CPU frames apart in wall-clock graphs.
pub const OFF_CPU_SUFFIX: &str = " [off-cpu]";

/// A frame's label in a folded line: Python frames carry file and line, kernel frames the
/// `_[k]` suffix inferno colours as kernel.
fn frame_label(f: &Frame) -> String {
    let name = match f.kind {
        FrameKind::Python => match f.line {
            Some(l) => format!("{} ({}:{l})", f.function, f.file),
            None => format!("{} ({})", f.function, f.file),
        },
        FrameKind::Native => f.function.clone(),
        FrameKind::Kernel => format!("{}_[k]", f.function),
    };
    // ';' separates frames and a trailing number is the weight: keep both out of names.
    name.replace(';', ":")
}

/// Profiles, by root frame (the route label): each distinct stack's on- and off-CPU time in µs
/// (each entry rounded as it is added). Merged as they come, so a run profiling every request
/// holds one entry per distinct stack, not one per request, and a route's graph reads only its
/// own stacks.
#[derive(Default, Debug)]
pub struct Flames {
    by_root: BTreeMap<String, HashMap<Vec<Frame>, (u64, u64)>>,
}

impl Flames {
    pub fn add(&mut self, method: &str, route: &str, profile: &[ProfileEntry]) {
        self.add_root(&format!("{method} {route}"), profile);
    }

    /// A profile under root frame `label`.
    pub fn add_root(&mut self, label: &str, profile: &[ProfileEntry]) {
        if profile.is_empty() {
            return;
        }
        let stacks = self.by_root.entry(label.to_string()).or_default();
        for p in profile {
            let (on, off) = ((p.on_cpu_ms * 1000.0).round() as u64, (p.off_cpu_ms * 1000.0).round() as u64);
            match stacks.get_mut(&p.stack) {
                Some(e) => {
                    e.0 += on;
                    e.1 += off;
                }
                None => {
                    stacks.insert(p.stack.clone(), (on, off));
                }
            }
        }
    }

    /// Route labels that have profiles, sorted.
    pub fn routes(&self) -> Vec<String> {
        self.by_root.keys().cloned().collect()
    }

    /// Folded lines (sorted, identical stacks merged), for one route or all.
    pub fn folded(&self, kind: Kind, route: Option<&str>) -> Vec<String> {
        let mut acc: BTreeMap<String, u64> = BTreeMap::new();
        let suffix = route.map(|r| format!(" {r}"));
        let wanted = |l: &str| route.is_none_or(|r| l == r || suffix.as_deref().is_some_and(|s| l.ends_with(s)));
        for (label, stacks) in self.by_root.iter().filter(|(l, _)| wanted(l)) {
            for (stack, &(on, off)) in stacks {
                let root_first = || std::iter::once(label.clone()).chain(stack.iter().rev().map(frame_label));
                if on > 0 && kind != Kind::Offcpu {
                    *acc.entry(root_first().collect::<Vec<_>>().join(";")).or_default() += on;
                }
                if off > 0 && kind != Kind::Cpu {
                    let frames: Vec<String> = root_first()
                        .enumerate()
                        .map(|(i, f)| if i == 0 || kind == Kind::Offcpu { f } else { format!("{f}{OFF_CPU_SUFFIX}") })
                        .collect();
                    *acc.entry(frames.join(";")).or_default() += off;
                }
            }
        }
        acc.into_iter().map(|(stack, n)| format!("{stack} {n}")).collect()
    }
}

/// Renders folded lines as an SVG flame graph. An empty profile still gives a valid SVG.
pub fn svg(folded: &[String], title: &str) -> anyhow::Result<Vec<u8>> {
    svg_with(folded, title, None, "no slow requests")
}

/// [`svg`] with a subtitle, and what an empty graph says.
pub fn svg_with(folded: &[String], title: &str, subtitle: Option<&str>, empty: &str) -> anyhow::Result<Vec<u8>> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.subtitle = subtitle.map(str::to_string);
    opts.count_name = "µs".to_string();
    opts.hash = true;
    let mut out = Vec::new();
    if folded.is_empty() {
        let placeholder = [format!("{empty} 1")];
        inferno::flamegraph::from_lines(&mut opts, placeholder.iter().map(String::as_str), &mut out)?;
    } else {
        inferno::flamegraph::from_lines(&mut opts, folded.iter().map(String::as_str), &mut out)?;
    }
    Ok(out)
}

/// Where a [`FlameSink`] writes when the run ends (opened before the watch starts).
pub enum FlameOut {
    /// One SVG of all slow requests, on- and off-CPU (`watch --flamegraph`).
    Svg { file: File, path: PathBuf },
    /// `record --slow-only`'s set: slow.folded, slow.svg, cpu.svg, offcpu.svg in `dir` and
    /// `routes`/*.svg, all of slow requests. `record`'s (all traffic, `sampling` says how):
    /// all.folded, all.svg, cpu.svg, offcpu.svg and routes/*.svg of every request and
    /// `(no request)`, and slow.folded, slow.svg of the slow ones.
    Dir { dir: OutDir, routes: OutDir, sampling: Option<String> },
}

impl FlameOut {
    pub fn svg(path: &Path) -> io::Result<Self> {
        let file = File::create(path).map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", path.display())))?;
        Ok(FlameOut::Svg { file, path: path.to_path_buf() })
    }

    /// `record`'s output directory, with its routes/ made.
    pub fn dir(dir: OutDir, sampling: Option<String>) -> io::Result<Self> {
        let routes = dir.subdir("routes")?;
        Ok(FlameOut::Dir { dir, routes, sampling })
    }

    /// The directories files are created in when the run ends.
    pub fn dirs(&self) -> Vec<std::os::fd::RawFd> {
        match self {
            FlameOut::Svg { .. } => Vec::new(),
            FlameOut::Dir { dir, routes, .. } => vec![dir.fd(), routes.fd()],
        }
    }
}

/// Collects the profiles of slow requests (and, profiling all traffic, of every request) and
/// draws them at the end.
pub struct FlameSink {
    flames: Flames,
    /// Every request's, profiling all traffic.
    all: Flames,
    out: FlameOut,
}

impl FlameSink {
    pub fn new(out: FlameOut) -> Self {
        Self { flames: Flames::default(), all: Flames::default(), out }
    }
}

/// The root frame of what the watched processes' threads did outside requests.
pub const NO_REQUEST: &str = "(no request)";

fn svg_io(folded: &[String], title: &str) -> io::Result<Vec<u8>> {
    svg(folded, title).map_err(io::Error::other)
}

/// Folded lines as a file's text.
pub fn folded_text(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn write(dir: &OutDir, name: &str, bytes: impl AsRef<[u8]>) -> io::Result<()> {
    dir.create(name)?.write_all(bytes.as_ref())
}

/// Writes the flame graphs of `flames` into `dir` (and the per-route ones into `routes`).
pub fn write_graphs(dir: &OutDir, routes: &OutDir, flames: &Flames) -> io::Result<()> {
    let wall = flames.folded(Kind::Wall, None);
    write(dir, "slow.folded", folded_text(&wall))?;
    write(dir, "slow.svg", svg_io(&wall, WALL_TITLE)?)?;
    write(dir, "cpu.svg", svg_io(&flames.folded(Kind::Cpu, None), "slow requests: on-CPU")?)?;
    write(dir, "offcpu.svg", svg_io(&flames.folded(Kind::Offcpu, None), "slow requests: off-CPU")?)?;
    for r in flames.routes() {
        let folded = flames.folded(Kind::Wall, Some(&r));
        write(routes, &format!("{}.svg", slug(&r)), svg_io(&folded, &format!("{r}: on-CPU and off-CPU [off-cpu]"))?)?;
    }
    Ok(())
}

/// Writes the all-traffic graphs of `all` into `dir` and `routes`, and the slow-only view of
/// `slow` (`sampling`: how the profile was sampled, said under each title).
pub fn write_all_graphs(dir: &OutDir, routes: &OutDir, all: &Flames, slow: &Flames, sampling: &str) -> io::Result<()> {
    let draw = |folded: &[String], title: &str, empty: &str| svg_with(folded, title, Some(sampling), empty).map_err(io::Error::other);
    let wall = all.folded(Kind::Wall, None);
    write(dir, "all.folded", folded_text(&wall))?;
    write(dir, "all.svg", draw(&wall, "all requests: on-CPU and off-CPU [off-cpu]", "no samples")?)?;
    write(dir, "cpu.svg", draw(&all.folded(Kind::Cpu, None), "all requests: on-CPU", "no samples")?)?;
    write(dir, "offcpu.svg", draw(&all.folded(Kind::Offcpu, None), "all requests: off-CPU", "no samples")?)?;
    let slow_wall = slow.folded(Kind::Wall, None);
    write(dir, "slow.folded", folded_text(&slow_wall))?;
    write(dir, "slow.svg", draw(&slow_wall, WALL_TITLE, "no slow requests")?)?;
    for r in all.routes().into_iter().filter(|r| r != NO_REQUEST) {
        let folded = all.folded(Kind::Wall, Some(&r));
        write(routes, &format!("{}.svg", slug(&r)), draw(&folded, &format!("{r}: on-CPU and off-CPU [off-cpu]"), "no samples")?)?;
    }
    Ok(())
}

const WALL_TITLE: &str = "slow requests: on-CPU and off-CPU [off-cpu]";

impl Sink for FlameSink {
    fn request(&mut self, c: &Completed<'_>) -> io::Result<()> {
        let Some(p) = c.profile else { return Ok(()) };
        let route = route::normalize(&c.request.path);
        // Profiling all traffic, every request goes to the all-traffic graphs and the slow ones
        // to the slow-only view too; otherwise only slow requests have profiles.
        let all_traffic = matches!(&self.out, FlameOut::Dir { sampling: Some(_), .. });
        if all_traffic {
            self.all.add(&c.request.method, &route, p);
        }
        if !all_traffic || c.slow {
            self.flames.add(&c.request.method, &route, p);
        }
        Ok(())
    }

    fn finish(&mut self, state: &State<'_>) -> io::Result<()> {
        match &mut self.out {
            FlameOut::Svg { file, path } => {
                file.write_all(&svg_io(&self.flames.folded(Kind::Wall, None), WALL_TITLE)?)?;
                eprintln!("introspect: flame graph of slow requests written to {}", path.display());
            }
            FlameOut::Dir { dir, routes, sampling: Some(sampling) } => {
                self.all.add_root(NO_REQUEST, &state.summary.no_request);
                write_all_graphs(dir, routes, &self.all, &self.flames, sampling)?;
                eprintln!(
                    "introspect: wrote {0}/all.svg, cpu.svg, offcpu.svg, slow.svg (and .folded) and routes/ ({1} route graphs)",
                    dir.path().display(),
                    self.all.routes().iter().filter(|r| *r != NO_REQUEST).count()
                );
            }
            FlameOut::Dir { dir, routes, sampling: None } => {
                write_graphs(dir, routes, &self.flames)?;
                eprintln!(
                    "introspect: wrote {0}/slow.folded, slow.svg, cpu.svg, offcpu.svg and routes/ ({1} route graphs)",
                    dir.path().display(),
                    self.flames.routes().len()
                );
            }
        }
        Ok(())
    }
}

/// A file-name-safe form of a route label ("GET /users/{id}" → "GET_users_id").
pub fn slug(label: &str) -> String {
    let s: String = label.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let mut out = String::new();
    for part in s.split('_').filter(|p| !p.is_empty()) {
        if !out.is_empty() {
            out.push('_');
        }
        out.push_str(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(f: &str, line: u32) -> Frame {
        Frame { function: f.into(), file: "app.py".into(), line: Some(line), kind: FrameKind::Python, def_line: None }
    }

    #[test]
    fn folds_root_first_and_marks_off_cpu() {
        let mut fl = Flames::default();
        let burn = ProfileEntry { stack: vec![py("helper;cpu", 3), py("view", 9)], on_cpu_ms: 12.5, off_cpu_ms: 0.0, samples: 1 };
        let k = Frame { function: "schedule".into(), file: String::new(), line: None, kind: FrameKind::Kernel, def_line: None };
        let sleep = ProfileEntry { stack: vec![k, py("sleep", 5), py("view", 9)], on_cpu_ms: 0.0, off_cpu_ms: 300.0, samples: 0 };
        fl.add("GET", "/x/{id}", &[burn.clone(), sleep]);
        fl.add("GET", "/x/{id}", &[burn]);
        assert_eq!(fl.folded(Kind::Cpu, None), vec!["GET /x/{id};view (app.py:9);helper:cpu (app.py:3) 25000"]);
        assert_eq!(fl.folded(Kind::Offcpu, None), vec!["GET /x/{id};view (app.py:9);sleep (app.py:5);schedule_[k] 300000"]);
        let wall = fl.folded(Kind::Wall, Some("/x/{id}"));
        assert_eq!(wall.len(), 2);
        assert!(wall.contains(&"GET /x/{id};view (app.py:9) [off-cpu];sleep (app.py:5) [off-cpu];schedule_[k] [off-cpu] 300000".to_string()));
        assert!(fl.folded(Kind::Wall, Some("/other")).is_empty());
        let svg = String::from_utf8(svg(&wall, "t").unwrap()).unwrap();
        assert!(svg.contains("<svg") && svg.contains("helper:cpu (app.py:3)"));
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("GET /users/{id}/orders"), "GET_users_id_orders");
    }
}
