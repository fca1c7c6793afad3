//! `--disk FILE[,readonly]`: a raw image file behind the ATA disk.
//!
//! Nothing the guest completed is lost: a write reaches the file (pwrite,
//! the host's page cache) before the device reports it done, FLUSH CACHE
//! is an fsync, and the image is fsynced when the run ends, whichever way
//! (the disk is dropped with the board). The image is locked (flock) so
//! that a second btvmm cannot use it at the same time.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use devices::ata::{BlockBackend, SECTOR_BYTES};

use crate::LoaderError;

/// What `--disk` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image file.
    pub path: PathBuf,
    /// Writes are refused (the device aborts them).
    pub read_only: bool,
}

impl DiskSpec {
    /// Parses `FILE` or `FILE,readonly` (`FILE,ro` too).
    ///
    /// # Errors
    ///
    /// A description of what is wrong with `text`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (path, read_only) = match text.rsplit_once(',') {
            Some((path, "readonly" | "ro")) => (path, true),
            Some((_, option)) => {
                return Err(format!(
                    "unknown disk option {option:?} (FILE or FILE,readonly)"
                ));
            }
            None => (text, false),
        };
        if path.is_empty() {
            return Err("no image file named".into());
        }
        Ok(Self {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

/// An open, locked image.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    sectors: u64,
    read_only: bool,
}

impl DiskImage {
    /// Opens and locks the image.
    ///
    /// # Errors
    ///
    /// [`LoaderError::Disk`] when the file cannot be opened, is locked by
    /// another process, is empty or is not a whole number of sectors.
    pub fn open(spec: &DiskSpec) -> Result<Self, LoaderError> {
        let fail = |why: String| LoaderError::Disk {
            path: spec.path.clone(),
            why,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!spec.read_only)
            .open(&spec.path)
            .map_err(|error| fail(error.to_string()))?;
        let lock = if spec.read_only {
            nix::fcntl::FlockArg::LockSharedNonblock
        } else {
            nix::fcntl::FlockArg::LockExclusiveNonblock
        };
        #[allow(deprecated)] // nix's Flock guard would own the file
        nix::fcntl::flock(file.as_raw_fd(), lock).map_err(|errno| {
            fail(if errno == nix::errno::Errno::EWOULDBLOCK {
                "in use by another process (locked)".into()
            } else {
                format!("cannot be locked: {errno}")
            })
        })?;
        let metadata = file.metadata().map_err(|error| fail(error.to_string()))?;
        if !metadata.is_file() {
            return Err(fail("not a regular file".into()));
        }
        let bytes = metadata.len();
        if bytes == 0 || bytes % SECTOR_BYTES as u64 != 0 {
            return Err(fail(format!(
                "{bytes} bytes: not a whole, nonzero number of {SECTOR_BYTES}-byte sectors"
            )));
        }
        Ok(Self {
            file,
            path: spec.path.clone(),
            sectors: bytes / SECTOR_BYTES as u64,
            read_only: spec.read_only,
        })
    }

    /// The file's descriptor (the host filter allows I/O on it).
    #[must_use]
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The serial number IDENTIFY gives: from the image's inode, so the
    /// same image shows the same disk from run to run.
    #[must_use]
    pub fn serial(&self) -> String {
        use std::os::unix::fs::MetadataExt;
        let inode = self.file.metadata().map_or(0, |metadata| metadata.ino());
        format!("BTVMM{:015X}", inode & 0x0fff_ffff_ffff_ffff)
    }

    /// The image's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn offset(lba: u64) -> io::Result<u64> {
        lba.checked_mul(SECTOR_BYTES as u64)
            .ok_or_else(|| io::Error::other("sector address overflows"))
    }
}

impl BlockBackend for DiskImage {
    fn sectors(&self) -> u64 {
        self.sectors
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, Self::offset(lba)?)
    }

    fn write(&mut self, lba: u64, data: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::other("read-only image"));
        }
        self.file.write_all_at(data, Self::offset(lba)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_all()
    }
}

impl Drop for DiskImage {
    fn drop(&mut self) {
        // Whatever way the run ended, what the guest wrote is on the
        // disk before btvmm exits (the lock goes with the descriptor).
        if !self.read_only
            && let Err(error) = self.file.sync_all()
        {
            eprintln!(
                "btvmm: flushing the disk image {}: {error}",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(tag: &str, bytes: usize) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("btvmm-disk-{tag}-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; bytes]).expect("write");
        path
    }

    #[test]
    fn specs_parse() {
        assert_eq!(
            DiskSpec::parse("a.img").expect("plain"),
            DiskSpec {
                path: "a.img".into(),
                read_only: false
            }
        );
        assert!(DiskSpec::parse("a.img,readonly").expect("ro").read_only);
        assert!(DiskSpec::parse("a.img,ro").expect("ro").read_only);
        assert!(DiskSpec::parse("a.img,cache=none").is_err());
        assert!(DiskSpec::parse("").is_err());
    }

    #[test]
    fn writes_reach_the_file_and_a_second_open_is_refused() {
        let path = image("rw", 8 * SECTOR_BYTES);
        let spec = DiskSpec {
            path: path.clone(),
            read_only: false,
        };
        let mut disk = DiskImage::open(&spec).expect("open");
        assert_eq!(disk.sectors(), 8);
        disk.write(7, &[0xab; SECTOR_BYTES]).expect("write");
        disk.flush().expect("flush");
        let on_disk = std::fs::read(&path).expect("read");
        assert_eq!(on_disk[7 * SECTOR_BYTES], 0xab);
        let mut back = [0u8; SECTOR_BYTES];
        disk.read(7, &mut back).expect("read");
        assert_eq!(back, [0xab; SECTOR_BYTES]);
        assert!(disk.read(8, &mut back).is_err(), "past the end");
        let second = DiskImage::open(&spec).expect_err("locked");
        assert!(second.to_string().contains("in use"), "{second}");
        drop(disk);
        DiskImage::open(&spec).expect("free again");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn images_that_are_not_whole_sectors_are_refused() {
        let path = image("odd", 1000);
        let error = DiskImage::open(&DiskSpec {
            path: path.clone(),
            read_only: false,
        })
        .expect_err("odd size");
        assert!(error.to_string().contains("1000 bytes"), "{error}");
        let _ = std::fs::remove_file(path);
        let missing = DiskImage::open(&DiskSpec {
            path: "/nonexistent/btvmm.img".into(),
            read_only: true,
        })
        .expect_err("missing");
        assert!(missing.to_string().contains("No such file"), "{missing}");
    }
}
