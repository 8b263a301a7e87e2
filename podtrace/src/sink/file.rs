//! The byte stream under file sinks: buffered, and able to cut a file back to
//! its last whole record when a write fails (disk full), so what is on disk
//! always parses.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::Path,
};

use super::SinkError;

/// Counts what really reached the file; after a rollback it swallows the
/// rest, so a buffer dropped later cannot append a torn record.
struct Counted {
    out: Box<dyn Write + Send>,
    file: Option<File>,
    written: u64,
    poisoned: bool,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.poisoned {
            return Ok(buf.len());
        }
        let n = self.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.poisoned {
            return Ok(());
        }
        self.out.flush()
    }
}

pub struct RecordFile {
    buf: BufWriter<Counted>,
    /// Bytes accepted from the writer (buffered or not).
    logical: u64,
    /// Offsets where records end, since the last flush (the first entry is
    /// the last record end known to be on disk).
    ends: Vec<u64>,
    name: String,
}

impl RecordFile {
    /// Opens `path` for a new capture: never through a symlink (podtrace
    /// runs as root and is pointed at shared directories), private (0600)
    /// when podtrace creates it, truncated but with its mode kept when it
    /// is an existing regular file, as is when it is a device or a FIFO.
    pub fn create(path: &Path) -> Result<Self, SinkError> {
        let open_err = |source| SinkError::Open {
            path: path.to_owned(),
            source,
        };
        let file = open_output(path).map_err(open_err)?;
        let out = file.try_clone().map_err(open_err)?;
        Ok(Self::new(
            Box::new(out),
            Some(file),
            path.display().to_string(),
        ))
    }

    pub fn stdout() -> Self {
        Self::new(Box::new(io::stdout()), None, "standard output".into())
    }

    fn new(out: Box<dyn Write + Send>, file: Option<File>, name: String) -> Self {
        Self {
            // Large writes: fewer syscalls, and the page cache can use large
            // folios (64 KiB → 256 KiB cut capture CPU per packet ~15%).
            buf: BufWriter::with_capacity(
                1 << 18,
                Counted {
                    out,
                    file,
                    written: 0,
                    poisoned: false,
                },
            ),
            logical: 0,
            ends: vec![0],
            name,
        }
    }

    /// Writes one whole record (a file header or a packet).
    pub fn record(
        &mut self,
        write: impl FnOnce(&mut Self) -> io::Result<()>,
    ) -> Result<(), SinkError> {
        match write(self) {
            Ok(()) => {
                self.end_record();
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Marks the end of a whole record written through `Write`.
    pub fn end_record(&mut self) {
        self.ends.push(self.logical);
    }

    /// What the file is called in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes written so far (buffered or not), for size-based rotation.
    pub fn bytes_written(&self) -> u64 {
        self.logical
    }

    pub fn flush(&mut self) -> Result<(), SinkError> {
        match self.buf.flush() {
            Ok(()) => {
                let last = *self.ends.last().unwrap_or(&0);
                self.ends.clear();
                self.ends.push(last);
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Cuts the file back to the last record that fully reached it.
    pub fn fail(&mut self, source: io::Error) -> SinkError {
        let counted = self.buf.get_mut();
        if let Some(file) = &counted.file {
            let on_disk = counted.written;
            let cut = self
                .ends
                .iter()
                .rev()
                .find(|&&end| end <= on_disk)
                .copied()
                .unwrap_or(0);
            let _ = file.set_len(cut);
        }
        counted.poisoned = true;
        SinkError::Write {
            target: self.name.clone(),
            source,
        }
    }
}

/// The output file, opened without following a symlink in its last
/// component: a link planted at `-w`'s name (say to /etc/passwd) is refused
/// rather than truncated and filled with packets.
fn open_output(path: &Path) -> io::Result<File> {
    let nofollow = libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nofollow)
        .open(path);
    let err = match created {
        Ok(file) => return Ok(file),
        Err(e) => e,
    };
    if err.kind() != io::ErrorKind::AlreadyExists {
        return Err(err);
    }
    // An existing name: the user's own file, a device (/dev/null) or a FIFO.
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(nofollow)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::other(
                "it is a symbolic link, and podtrace does not write through symlinks (name the file it points to)",
            ),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if meta.is_file() {
        // Another name for the same file (a hard link planted like a
        // symlink) would be emptied too.
        if meta.nlink() > 1 {
            return Err(io::Error::other(format!(
                "it has {} hard links, and podtrace does not truncate a file that other names share",
                meta.nlink()
            )));
        }
        file.set_len(0)?;
    }
    Ok(file)
}

impl Write for RecordFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.buf.write(data)?;
        self.logical += n as u64;
        Ok(n)
    }

    /// BufWriter's own write_all (a copy into its buffer when there is
    /// room), not the generic loop over `write`: this runs twice per packet.
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.buf.write_all(data)?;
        self.logical += data.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.buf.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts `room` bytes, then fails like a full disk.
    struct Full {
        file: File,
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.file.write(&buf[..n])
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_leaves_only_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let file = File::create(&path).unwrap();
        let out = Full {
            file: file.try_clone().unwrap(),
            room: 25,
        };
        let mut rf = RecordFile::new(Box::new(out), Some(file), "x".into());
        for _ in 0..2 {
            rf.record(|w| w.write_all(&[1; 10])).unwrap();
        }
        rf.flush().unwrap();
        // 20 bytes on disk; the third record only half fits.
        rf.record(|w| w.write_all(&[2; 10])).unwrap();
        let err = rf.flush().unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        drop(rf);
        assert_eq!(std::fs::read(&path).unwrap(), vec![1; 20]);
    }

    #[test]
    fn created_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pcap");
        RecordFile::create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn an_existing_file_is_truncated_and_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pcap");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        RecordFile::create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(meta.len(), 0);
    }

    #[test]
    fn symlinks_are_refused_and_their_target_untouched() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("passwd");
        std::fs::write(&victim, b"root:x:0:0\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("x.pcap");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = RecordFile::create(&link).err().unwrap();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"root:x:0:0\n");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        // A dangling link is not followed to create its target either.
        let dangling = dir.path().join("d.pcap");
        std::os::unix::fs::symlink(dir.path().join("new"), &dangling).unwrap();
        assert!(RecordFile::create(&dangling).is_err());
        assert!(!dir.path().join("new").exists());
    }

    #[test]
    fn hard_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("shadow");
        std::fs::write(&victim, b"secret").unwrap();
        let link = dir.path().join("x.pcap");
        std::fs::hard_link(&victim, &link).unwrap();
        let err = RecordFile::create(&link).err().unwrap();
        assert!(err.to_string().contains("hard links"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"secret");
    }

    #[test]
    fn devices_are_written_as_they_are() {
        RecordFile::create(Path::new("/dev/null")).unwrap();
    }
}
