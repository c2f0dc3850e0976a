//! Thin helpers over polars for reading operator and grid tables.
//!
//! Tables are read with every column as text so that a malformed value
//! becomes a precise, line-numbered rejection in the caller instead of a
//! whole-file parse failure deep inside the CSV reader.

use std::path::Path;

use polars::prelude::*;

/// A header row, every column as `String`, ragged rows refused.
fn text_csv() -> CsvReadOptions {
    CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .with_raise_if_empty(false)
        .map_parse_options(|o| o.with_truncate_ragged_lines(false))
}

/// Reads a CSV file with a header, every column as `String`.
pub fn read_csv_as_strings(path: &Path) -> PolarsResult<DataFrame> {
    text_csv()
        .try_into_reader_with_file_path(Some(path.to_path_buf()))?
        .finish()
}

/// Parses CSV bytes (a header line first) like [`read_csv_as_strings`].
pub fn read_csv_bytes_as_strings(bytes: Vec<u8>) -> PolarsResult<DataFrame> {
    text_csv()
        .into_reader_with_file_handle(std::io::Cursor::new(bytes))
        .finish()
}

/// Reads a Parquet file.
pub fn read_parquet(path: &Path) -> PolarsResult<DataFrame> {
    let file = std::fs::File::open(path)?;
    ParquetReader::new(file).finish()
}

/// Writes a DataFrame to Parquet (zstd) into an already-open file.
///
/// Buffered: the writer's many small writes were one syscall each, the
/// main cost of a delivery spanning thousands of small day files. Min, max
/// and null counts only: the distinct-count estimate (HyperLogLog over
/// every column of every file) was the next cost and nothing reads it.
pub fn write_parquet(df: &mut DataFrame, file: &mut std::fs::File) -> PolarsResult<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
    parquet_writer(&mut out).finish(df)?;
    std::io::Write::flush(&mut out)?;
    Ok(())
}

/// Writes frames of one schema into one Parquet file, in order, each in
/// row groups of its own (so that a reader can take one frame's rows
/// without decoding the others').
pub fn write_row_groups(frames: &mut [&mut DataFrame], file: &mut std::fs::File) -> PolarsResult<()> {
    let Some(first) = frames.first() else {
        return Ok(());
    };
    let schema = first.schema().clone();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
    // LZ4: zstd builds a compression context for every page, which was
    // the largest single cost of writing thousands of one-day row groups.
    let mut writer = parquet_writer(&mut out)
        .with_compression(ParquetCompression::Lz4Raw)
        .batched(&schema)?;
    for frame in frames.iter_mut() {
        writer.write_batch(frame.align_chunks())?;
    }
    writer.finish()?;
    drop(writer);
    std::io::Write::flush(&mut out)?;
    Ok(())
}

/// hexflow's Parquet settings (zstd; min, max and null counts), for a whole
/// frame or, through `batched`, one row group at a time.
pub fn parquet_writer<W: std::io::Write>(file: W) -> ParquetWriter<W> {
    ParquetWriter::new(file)
        .with_compression(ParquetCompression::Zstd(None))
        .with_statistics(StatisticsOptions::default())
}

/// Column names of a frame, for error messages.
pub fn column_names(df: &DataFrame) -> Vec<String> {
    df.get_column_names().iter().map(|n| n.to_string()).collect()
}
