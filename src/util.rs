//! Small file-system helpers shared by the stages: content hashes, crash-safe
//! writes, advisory locks, work on every core and test failpoints.
//!
//! Every file hexflow persists goes through [`write_atomic`]: the bytes land
//! in a temporary sibling, are fsynced, renamed over the target and the parent
//! directory is fsynced, so a reader (or a crash) sees the old file or the new
//! one, never half of either.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Hex-encoded SHA-256 of a file's bytes, streamed so large deliveries do not
/// have to fit in memory twice.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Hex-encoded SHA-256 of several byte slices, each length-prefixed so that
/// `["ab", "c"]` and `["a", "bc"]` hash differently.
pub fn sha256_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex(&hasher.finalize())
}

/// Lower-case hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` bytes from the operating system's random source (tokens, keys).
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut out = [0u8; N];
    File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut out))?;
    Ok(out)
}

/// Path of the temporary sibling used while `target` is being written.
///
/// Temporary names end in `.tmp` so that recovery can recognise and delete
/// leftovers of a crashed writer.
pub fn tmp_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}.tmp", std::process::id()));
    target.with_file_name(name)
}

/// Writes `bytes` to `target` so that a crash leaves either the old content
/// or the new one.
pub fn write_atomic(target: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(target, |file| file.write_all(bytes))
}

/// Like [`write_atomic`], with the content produced by a closure writing to
/// the temporary file (used for Parquet writers).
pub fn write_atomic_with(target: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let mut file = AtomicFile::create(target)?;
    write(file.file())?;
    file.commit()
}

/// A file written under its temporary name ([`tmp_path`]) for as long as it
/// takes, e.g. batch by batch, then renamed over its target by
/// [`AtomicFile::commit`]; dropped uncommitted (an error on the way), the
/// temporary is deleted.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    file: File,
    committed: bool,
}

impl AtomicFile {
    pub fn create(target: &Path) -> io::Result<Self> {
        fs::create_dir_all(target.parent().unwrap_or(Path::new(".")))?;
        let tmp = tmp_path(target);
        Ok(Self {
            target: target.to_path_buf(),
            file: File::create(&tmp)?,
            tmp,
            committed: false,
        })
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Fsyncs the content, renames it over the target and fsyncs the folder.
    pub fn commit(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        fs::rename(&self.tmp, &self.target)?;
        self.committed = true;
        sync_dir(self.target.parent().unwrap_or(Path::new(".")))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the temporary is garbage either way, and the error
            // that matters is the one being returned.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Makes everything written on the filesystem holding `path` durable, data
/// and metadata (new files, new directories), with one `syncfs(2)`: what a
/// commit of thousands of day files needs before its catalog names them,
/// at the price of one call instead of two fsyncs per file.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    rustix::fs::syncfs(File::open(path)?).map_err(io::Error::from)
}

/// Fsyncs a directory so that renames and unlinks inside it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An exclusive advisory lock on a file, released on drop.
///
/// Used to serialise writers of one dataset's store across processes.
#[derive(Debug)]
pub struct DirLock {
    file: File,
}

impl DirLock {
    fn open(path: &Path) -> io::Result<File> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
    }

    /// Blocks until the lock file at `path` is held exclusively.
    pub fn acquire(path: &Path) -> io::Result<Self> {
        let file = Self::open(path)?;
        file.lock()?;
        Ok(Self { file })
    }

    /// Blocks until the lock file at `path` is held shared (many holders
    /// at once; excludes only exclusive holders).
    pub fn acquire_shared(path: &Path) -> io::Result<Self> {
        let file = Self::open(path)?;
        file.lock_shared()?;
        Ok(Self { file })
    }

    /// The exclusive lock if nobody holds it, else `None` at once.
    pub fn try_acquire(path: &Path) -> io::Result<Option<Self>> {
        let file = Self::open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// The cores of this machine (1 when it cannot tell).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// `f` over `items` on one plain thread per core (at most one per item),
/// each taking the next item; the results come back in the items' order.
/// Plain threads, not rayon's pool: the work may use rayon inside, and a
/// rayon worker blocked there would steal more of this loop. The threads
/// get a large stack: polars' Parquet writer recurses deeper than a
/// spawned thread's default 2 MiB allows in a debug build.
pub fn on_threads<T: Send, R: Send>(name: &str, items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = cores().min(items.len());
    let queue = std::sync::Mutex::new(items.into_iter().enumerate());
    // The lock is held only to take the next item.
    let take = || queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next();
    let work = || {
        let mut done = Vec::new();
        while let Some((i, item)) = take() {
            done.push((i, f(item)));
        }
        done
    };
    let mut results: Vec<(usize, R)> = std::thread::scope(|scope| {
        // A thread the system refuses is one fewer.
        let workers: Vec<_> = (0..threads)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name(name.to_string())
                    .stack_size(64 << 20)
                    .spawn_scoped(scope, work)
                    .ok()
            })
            .collect();
        let mut done = Vec::new();
        for w in workers {
            done.extend(w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        // Nothing is left unless no thread could be started at all.
        done.extend(work());
        done
    });
    results.sort_unstable_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Aborts the process when the environment variable `HEXFLOW_FAILPOINT`
/// names this point.
///
/// Crash tests set it to simulate a power cut at a precise step; `abort`
/// skips destructors and buffered writes exactly like a kill would.
///
/// With `HEXFLOW_FAILPOINT_ONCE=FILE`, only the process that creates FILE
/// stops: a crash test of workers kills one of them, not every process
/// that inherited the variable.
pub fn failpoint(name: &str) {
    if std::env::var("HEXFLOW_FAILPOINT").is_ok_and(|v| v == name) {
        if let Some(once) = std::env::var_os("HEXFLOW_FAILPOINT_ONCE")
            && fs::OpenOptions::new().write(true).create_new(true).open(once).is_err()
        {
            return;
        }
        eprintln!("hexflow: failpoint {name} hit, aborting");
        std::process::abort();
    }
}

/// A pause for tests at the step `name` (`HEXFLOW_PAUSE=name`): creates
/// `$HEXFLOW_PAUSE_FILE.paused`, then waits until `$HEXFLOW_PAUSE_FILE`
/// exists, so that a test can act (end a database session, start a rival
/// process) at exactly that step.
pub fn pausepoint(name: &str) {
    if std::env::var("HEXFLOW_PAUSE").is_ok_and(|v| v == name)
        && let Some(go) = std::env::var_os("HEXFLOW_PAUSE_FILE")
    {
        let go = std::path::PathBuf::from(go);
        let mut paused = go.clone().into_os_string();
        paused.push(".paused");
        let _ = fs::write(&paused, b"");
        while !go.exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_threads_keeps_the_items_order() {
        let items: Vec<u64> = (0..500).collect();
        // Uneven work, so threads finish out of order.
        let out = on_threads("test", items, |i| {
            if i % 7 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            (i, std::thread::current().name().map(str::to_string))
        });
        assert_eq!(
            out.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..500).collect::<Vec<_>>()
        );
        assert!(out.iter().all(|(_, name)| name.as_deref() == Some("test")));
    }

    #[test]
    fn parts_hash_is_length_prefixed() {
        assert_ne!(
            sha256_parts([b"ab".as_slice(), b"c"]),
            sha256_parts([b"a".as_slice(), b"bc"])
        );
    }

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("x.json");
        write_atomic(&target, b"one").expect("write");
        write_atomic(&target, b"two").expect("write");
        assert_eq!(fs::read(&target).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.json")]);
    }
}
