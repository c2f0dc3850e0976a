//! Reading a delivery in batches of rows, so that validating a file needs
//! memory for one batch, not for the file.
//!
//! CSV: the header line is read first; then blocks of about
//! [`CSV_BLOCK_BYTES`] are cut at a line end outside quotes, the header is
//! put in front of each, and polars parses the block (every column as
//! text). Blank lines at the end of the file are not rows. Parquet: slices
//! of [`PARQUET_BATCH_ROWS`] rows, read with polars' own slicing.
//!
//! Polars' parse errors quote the offending field, which can be a count:
//! they are classified here and never printed or logged.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::IngestError;

/// Bytes of CSV parsed at once (a block grows to hold a longer line).
pub const CSV_BLOCK_BYTES: usize = 16 << 20;
/// Rows of Parquet read at once.
pub const PARQUET_BATCH_ROWS: usize = 1 << 20;

/// A delivery being read batch by batch.
pub struct DeliveryReader {
    path: PathBuf,
    kind: Kind,
    /// Column names, from the CSV header or the Parquet schema.
    pub names: Vec<String>,
    /// The line (CSV; the header is line 1) or 1-based row (Parquet) of
    /// the first data row.
    pub first_line: usize,
    /// Bytes of the file, for progress.
    pub bytes: u64,
}

enum Kind {
    Csv {
        file: File,
        /// The header line, with its line end.
        header: Vec<u8>,
        /// Bytes read past the last cut.
        carry: Vec<u8>,
        /// Bytes of content left to read (trailing blank lines excluded).
        left: u64,
        /// Bytes parsed at once ([`CSV_BLOCK_BYTES`]; smaller in tests).
        block_bytes: usize,
    },
    Parquet {
        rows: usize,
        next: usize,
    },
}

fn unreadable(path: &Path, format: &'static str, reason: &str) -> IngestError {
    IngestError::Unreadable {
        path: path.to_path_buf(),
        format,
        reason: reason.to_string(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IngestError + '_ {
    move |source| IngestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DeliveryReader {
    /// Opens a delivery; Parquet is recognised by its magic bytes, anything
    /// else is read as CSV.
    pub fn open(path: &Path) -> Result<Self, IngestError> {
        let mut file = File::open(path).map_err(io(path))?;
        let bytes = file.metadata().map_err(io(path))?.len();
        let mut magic = [0u8; 4];
        let is_parquet = file.read_exact(&mut magic).is_ok() && &magic == b"PAR1";
        file.seek(SeekFrom::Start(0)).map_err(io(path))?;
        if is_parquet {
            let damaged = || {
                unreadable(
                    path,
                    "Parquet",
                    "the file is damaged or truncated (not a readable Parquet file)",
                )
            };
            let mut reader = ParquetReader::new(file);
            let schema = reader.schema().map_err(|_| damaged())?;
            let rows = reader.num_rows().map_err(|_| damaged())?;
            return Ok(Self {
                path: path.to_path_buf(),
                kind: Kind::Parquet { rows, next: 0 },
                names: schema.iter_names().map(|n| n.to_string()).collect(),
                first_line: 1,
                bytes,
            });
        }
        let content = content_len(&mut file, bytes).map_err(io(path))?;
        let header;
        let mut carry = Vec::new();
        let mut read = 0u64;
        // The header: everything up to the first line end outside quotes.
        loop {
            let mut block = vec![0u8; 64 << 10];
            let want = (content - read).min(block.len() as u64) as usize;
            let n = file.read(&mut block[..want]).map_err(io(path))?;
            read += n as u64;
            carry.extend_from_slice(&block[..n]);
            if let Some(end) = first_line_end(&carry) {
                header = carry[..=end].to_vec();
                carry.drain(..=end);
                break;
            }
            if n == 0 {
                carry.push(b'\n');
                header = std::mem::take(&mut carry);
                break;
            }
        }
        let names = parse_csv(path, header.clone())?
            .get_column_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            kind: Kind::Csv {
                file,
                header,
                carry,
                left: content - read,
                block_bytes: CSV_BLOCK_BYTES,
            },
            names,
            first_line: 2,
            bytes,
        })
    }

    /// Bytes of the file read so far (approximate for Parquet), for progress.
    pub fn consumed(&self) -> u64 {
        match &self.kind {
            Kind::Csv { carry, left, .. } => self.bytes.saturating_sub(*left + carry.len() as u64),
            Kind::Parquet { rows, next } => (self.bytes as f64 * *next as f64 / (*rows).max(1) as f64) as u64,
        }
    }

    /// Parses CSV in blocks of `n` bytes instead of [`CSV_BLOCK_BYTES`].
    #[cfg(test)]
    fn with_block_bytes(mut self, n: usize) -> Self {
        if let Kind::Csv { block_bytes, .. } = &mut self.kind {
            *block_bytes = n;
        }
        self
    }

    /// The next batch of rows, `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<DataFrame>, IngestError> {
        let path = self.path.clone();
        match &mut self.kind {
            Kind::Parquet { rows, next } => {
                if *next >= *rows {
                    return Ok(None);
                }
                let len = PARQUET_BATCH_ROWS.min(*rows - *next);
                let file = File::open(&path).map_err(io(&path))?;
                let df = ParquetReader::new(file)
                    .with_slice(Some((*next, len)))
                    .finish()
                    .map_err(|_| {
                        unreadable(
                            &path,
                            "Parquet",
                            "the file is damaged or truncated (not a readable Parquet file)",
                        )
                    })?;
                *next += len;
                Ok(Some(df))
            }
            Kind::Csv {
                file,
                header,
                carry,
                left,
                block_bytes,
            } => loop {
                let mut block = std::mem::take(carry);
                // A block holding a line longer than `block_bytes` grows.
                let room = if block.len() >= *block_bytes {
                    *block_bytes
                } else {
                    *block_bytes - block.len()
                };
                let want = (room as u64).min(*left) as usize;
                let start = block.len();
                block.resize(start + want, 0);
                file.read_exact(&mut block[start..]).map_err(io(&path))?;
                *left -= want as u64;
                let at_end = *left == 0;
                let cut = if at_end {
                    block.len()
                } else {
                    match last_line_end(&block) {
                        Some(end) => end + 1,
                        None => {
                            // One line longer than a block: read on.
                            *carry = block;
                            continue;
                        }
                    }
                };
                *carry = block.split_off(cut);
                if block.iter().all(|b| b.is_ascii_whitespace()) {
                    if at_end && carry.is_empty() {
                        return Ok(None);
                    }
                    continue;
                }
                let mut bytes = header.clone();
                bytes.extend_from_slice(&block);
                return parse_csv(&path, bytes).map(Some);
            },
        }
    }
}

/// Parses CSV bytes with a header row, every column as text.
fn parse_csv(path: &Path, bytes: Vec<u8>) -> Result<DataFrame, IngestError> {
    crate::table::read_csv_bytes_as_strings(bytes).map_err(|e| unreadable(path, "CSV", &csv_reason(&e)))
}

/// Why polars could not parse CSV, in words that never quote the file.
fn csv_reason(e: &PolarsError) -> String {
    let text = e.to_string();
    if text.contains("more fields") {
        "a row has more fields than the header".into()
    } else if text.contains("not properly escaped") || text.contains("quote") {
        "a quoted field is not closed".into()
    } else if text.contains("utf") || text.contains("UTF") {
        "the file is not UTF-8 text".into()
    } else {
        "not a comma-separated file with a header row".into()
    }
}

/// The file's length without the blank lines (whitespace) at its end.
fn content_len(file: &mut File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    let mut block = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block[..n])?;
        match block[..n].iter().rposition(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                end = start + i as u64 + 1;
                break;
            }
            None => end = start,
        }
    }
    file.seek(SeekFrom::Start(0))?;
    // Keep the content's own line end, if any.
    Ok((end + 1).min(len))
}

/// Index of the first `\n` outside double quotes.
fn first_line_end(bytes: &[u8]) -> Option<usize> {
    let mut quoted = false;
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Index of the last `\n` outside double quotes (blocks start outside).
fn last_line_end(bytes: &[u8]) -> Option<usize> {
    let mut quoted = false;
    let mut last = None;
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => last = Some(i),
            _ => {}
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_inside_quotes_do_not_cut() {
        let s = b"a,\"x\ny\",1\nb,c,2\n";
        assert_eq!(first_line_end(s), Some(9));
        assert_eq!(last_line_end(s), Some(15));
        assert_eq!(last_line_end(b"a,\"open\n"), None);
    }

    #[test]
    fn blocks_cover_every_row_once_and_drop_trailing_blank_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.csv");
        let mut s = String::from("cell_id,bin_start,devices\n");
        for i in 0..50_000 {
            s.push_str(&format!("C-{i},\"2025-03-12T01:00:00+01:00\",{i}\n"));
        }
        s.push_str("\n\n  \n");
        std::fs::write(&p, &s).expect("write");
        let mut r = DeliveryReader::open(&p).expect("open").with_block_bytes(4096);
        assert_eq!(r.names, ["cell_id", "bin_start", "devices"]);
        let mut seen = Vec::new();
        let mut batches = 0;
        while let Some(df) = r.next_batch().expect("batch") {
            batches += 1;
            let c = df.column("devices").expect("col").str().expect("str").clone();
            seen.extend(c.iter().map(|v| v.expect("value").parse::<u32>().expect("int")));
        }
        assert!(batches > 100, "{batches}");
        assert_eq!(seen, (0..50_000).collect::<Vec<u32>>());
    }
}
