//! Reading the files the exporter is pointed at (kernel files below
//! `--path.procfs`, the web configuration and its certificates) without
//! letting one of them stall or exhaust it.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Opens a file for reading, refusing anything but a regular file. It opens
/// without blocking, so that a FIFO put in a file's place is refused rather
/// than waited on, and a device such as `/dev/zero` is refused rather than
/// read forever.
pub fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Reads a whole regular file of at most `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("longer than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let folder = std::env::temp_dir().join(format!("portstat-files-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let file = folder.join("small");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_bounded(&file, 5).unwrap(), b"12345");
        assert!(
            read_bounded(&file, 4)
                .unwrap_err()
                .to_string()
                .contains("longer than 4")
        );
        let fifo = folder.join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `name` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        // Neither waits for a writer nor reads without end.
        assert!(
            read_bounded(&fifo, 5)
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
        assert!(read_bounded(Path::new("/dev/zero"), 5).is_err());
        assert!(read_bounded(&folder, 5).is_err());
        std::fs::remove_dir_all(&folder).unwrap();
    }
}
