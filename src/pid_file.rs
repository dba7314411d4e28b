//! `[server] pid_file`: written atomically (temp file, then rename) once the listeners are bound,
//! removed at a clean exit only while it still names this process.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the pid file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the pid file {path}: {source}")]
pub struct PidFileError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The pid file this process wrote.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Writes this process's pid to `path`: a reader sees the old content or the whole new one.
    pub fn write(path: &Path) -> Result<PidFile, PidFileError> {
        let pid = std::process::id();
        write_atomically(path, &format!("{pid}\n")).map_err(|source| PidFileError {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }

    /// Removes the file if it still names this process; another process's file is left alone.
    pub fn remove(self) {
        let names_us = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim().parse::<u32>() == Ok(self.pid));
        if !names_us {
            tracing::info!(path = %self.path.display(), "pid file names another process; left in place");
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the pid file");
        }
    }
}

/// `text` into a temporary file next to `path`, synced, then renamed over `path`.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let written = std::fs::File::create(&temp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&temp, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    renamed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(label: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("longhaul-pid-file-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_file_holds_this_pid_and_no_temp_file_is_left() {
        let dir = temp_dir("write");
        let path = dir.join("longhaul.pid");
        let _pid = PidFile::write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let entries = std::fs::read_dir(&dir).unwrap().count();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((text, entries), (format!("{}\n", std::process::id()), 1));
    }

    #[test]
    fn a_file_naming_another_process_is_not_removed() {
        let dir = temp_dir("other");
        let path = dir.join("longhaul.pid");
        let pid = PidFile::write(&path).unwrap();
        std::fs::write(&path, "1\n").unwrap();
        pid.remove();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(text, "1\n");
    }

    #[test]
    fn a_directory_that_does_not_exist_is_an_error_naming_the_path() {
        let path = Path::new("/nonexistent-longhaul-dir/longhaul.pid");
        let e = PidFile::write(path).unwrap_err();
        assert_eq!(e.path, path);
    }
}
