//! tracefs: make sure it is mounted, and read tracepoint record layouts from its `format` files
//! (there is no CO-RE from Rust, so field offsets are looked up on the running kernel).
use std::{
    cell::RefCell,
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    rc::Rc,
};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted and mounting it failed ({0}); run `mount -t tracefs nodev /sys/kernel/tracing` and try again")]
    Mount(std::io::Error),
    #[error("tracepoint {0} does not exist on this kernel (is CONFIG_FTRACE_SYSCALLS enabled?)")]
    Missing(String),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("tracepoint {tracepoint} has no field `{field}` (kernel layout changed?)")]
    NoField { tracepoint: String, field: String },
    #[error("tracepoint {tracepoint} field `{field}` is at offset {offset} size {size}, expected {want_offset}/{want_size}")]
    Layout { tracepoint: String, field: String, offset: usize, size: usize, want_offset: usize, want_size: usize },
}

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

fn populated(dir: &Path) -> bool {
    dir.join("events").is_dir()
}

/// Returns the tracefs mount point, mounting it at /sys/kernel/tracing when it is not mounted.
/// The second value says whether this call mounted it.
pub fn ensure_mounted() -> Result<(PathBuf, bool), TracefsError> {
    for dir in [TRACEFS, DEBUGFS_TRACING] {
        if populated(Path::new(dir)) {
            return Ok((PathBuf::from(dir), false));
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; a failed mount changes nothing.
    let rc = unsafe { libc::mount(c"nodev".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(TracefsError::Mount(std::io::Error::last_os_error()));
    }
    Ok((PathBuf::from(TRACEFS), true))
}

/// A field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: usize,
    pub size: usize,
}

/// Parses a `format` file into (name, field) pairs. Array fields are named without their `[N]`.
pub fn parse_format(text: &str) -> Vec<(String, Field)> {
    let mut fields = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else { continue };
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            } else if decl.is_none() && !part.is_empty() && !part.starts_with("signed:") {
                decl = Some(part);
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else { continue };
        let name = decl.rsplit([' ', '*']).next().unwrap_or(decl);
        let name = name.split('[').next().unwrap_or(name);
        fields.push((name.to_string(), Field { offset, size }));
    }
    fields
}

/// A format file's fields by name, in record order.
type Fields = Rc<Vec<(String, Field)>>;

pub struct Tracefs {
    root: PathBuf,
    /// Parsed format files by (system, event): startup asks for several fields of the same
    /// tracepoints.
    formats: RefCell<HashMap<(String, String), Fields>>,
}

impl Tracefs {
    pub fn new(root: PathBuf) -> Self {
        Self { root, formats: RefCell::new(HashMap::new()) }
    }

    pub fn format(&self, category: &str, name: &str) -> Result<Fields, TracefsError> {
        let key = (category.to_string(), name.to_string());
        if let Some(f) = self.formats.borrow().get(&key) {
            return Ok(Rc::clone(f));
        }
        let dir = self.root.join("events").join(category).join(name);
        if !dir.is_dir() {
            return Err(TracefsError::Missing(format!("{category}:{name}")));
        }
        let path = dir.join("format");
        let text = fs::read_to_string(&path).map_err(|source| TracefsError::Read { path, source })?;
        let parsed = Rc::new(parse_format(&text));
        self.formats.borrow_mut().insert(key, Rc::clone(&parsed));
        Ok(parsed)
    }

    pub fn field(&self, category: &str, name: &str, field: &str) -> Result<Field, TracefsError> {
        self.format(category, name)?
            .iter()
            .find(|(n, _)| n == field)
            .map(|(_, f)| *f)
            .ok_or_else(|| TracefsError::NoField { tracepoint: format!("{category}:{name}"), field: field.to_string() })
    }

    /// Checks a field is where the programs expect it (syscall records are ABI-fixed).
    pub fn expect_field(&self, category: &str, name: &str, field: &str, offset: usize, size: usize) -> Result<(), TracefsError> {
        let f = self.field(category, name, field)?;
        if f.offset != offset || f.size != size {
            return Err(TracefsError::Layout {
                tracepoint: format!("{category}:{name}"),
                field: field.to_string(),
                offset: f.offset,
                size: f.size,
                want_offset: offset,
                want_size: size,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_format() {
        let text = "name: tcp_probe\nID: 2273\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\
            \tfield:__u8 daddr[28];\toffset:36;\tsize:28;\tsigned:0;\n\tfield:__u16 sport;\toffset:64;\tsize:2;\tsigned:0;\n\
            \tfield:const void * skaddr;\toffset:128;\tsize:8;\tsigned:0;\n\nprint fmt: \"x\"";
        let f = parse_format(text);
        let get = |n: &str| f.iter().find(|(name, _)| name == n).map(|(_, f)| *f);
        assert_eq!(get("common_type"), Some(Field { offset: 0, size: 2 }));
        assert_eq!(get("daddr"), Some(Field { offset: 36, size: 28 }));
        assert_eq!(get("sport"), Some(Field { offset: 64, size: 2 }));
        assert_eq!(get("skaddr"), Some(Field { offset: 128, size: 8 }));
    }
}
