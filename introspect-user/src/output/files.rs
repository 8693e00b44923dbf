//! Output files opened before the watch forbids opening files for writing (`run::forbid`): an
//! output directory, and the files created under it through its fd when the run ends.
use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

/// A directory that files are created in through its fd.
pub struct OutDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn cstr(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} has a NUL byte")))
}

impl OutDir {
    pub fn open(path: &Path) -> io::Result<Self> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
        // SAFETY: a valid NUL-terminated path; the fd returned is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::new(io::Error::last_os_error().kind(), format!("opening {}: {}", path.display(), io::Error::last_os_error())));
        }
        // SAFETY: a fresh fd this process owns.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) }, path: path.to_path_buf() })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates (or truncates) file `name` in the directory.
    pub fn create(&self, name: &str) -> io::Result<File> {
        let c = cstr(name)?;
        // SAFETY: valid directory fd and NUL-terminated name.
        let fd = unsafe { libc::openat(self.fd(), c.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC, 0o644) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("creating {}: {e}", self.path.join(name).display())));
        }
        // SAFETY: a fresh fd this process owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Directory `name` in this one, made if needed.
    pub fn subdir(&self, name: &str) -> io::Result<OutDir> {
        let c = cstr(name)?;
        // SAFETY: valid directory fd and NUL-terminated name.
        if unsafe { libc::mkdirat(self.fd(), c.as_ptr(), 0o755) } != 0 && io::Error::last_os_error().kind() != io::ErrorKind::AlreadyExists {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("creating {}: {e}", self.path.join(name).display())));
        }
        OutDir::open(&self.path.join(name))
    }
}
