//! The batch tables, rebuilt from the per-prompt records at the end of every
//! run, in input order:
//!
//! * `cells.parquet` (and `cells.csv` with `--csv`): one row per (prompt,
//!   row, position), ordered by prompt, then row, then position, with the
//!   columns of [`CELL_COLUMNS`]: the input token and its kind, entropy, KL
//!   to the output row, the top-1 token and probability, the answer token's
//!   probability and rank (null without an answer), and the distractors'
//!   (lists in the order of the prompt's `alts`; `;`-separated in CSV);
//! * `prompts.jsonl`: one summary line per finished prompt.
//!
//! Each is written to a temporary file and renamed into place when complete.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::input::InputLine;
use super::record::{temp_path, PromptRecord};
use crate::grid::TrackedToken;
use crate::rehearsal::RehearsalSummary;
use crate::{Error, Result};

/// Column names of the cells table, in order.
pub const CELL_COLUMNS: [&str; 14] = [
    "id",
    "row",
    "pos",
    "token",
    "kind",
    "entropy",
    "kl",
    "top1",
    "top1_id",
    "top1_prob",
    "answer_prob",
    "answer_rank",
    "alt_probs",
    "alt_ranks",
];

/// One line of `prompts.jsonl`.
#[derive(Debug, Serialize)]
pub struct PromptLine<'a> {
    pub id: &'a str,
    /// 1-based line in the input file.
    pub line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<&'a str>,
    pub prompt: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<&'a str>,
    /// The expected answer from the input, if any.
    pub expected: Option<&'a str>,
    pub alts: &'a [String],
    /// The tracked answer token: `{id, text, source, skip}`.
    pub answer_token: Option<AnswerToken<'a>>,
    /// The greedy continuation.
    pub greedy: Option<&'a str>,
    /// Positions, dummies included.
    pub n_tokens: usize,
    /// Greedy text contains the expected answer (trimmed, case-insensitive).
    pub correct: Option<bool>,
    pub rehearsal: Option<&'a RehearsalSummary>,
}

/// The answer token as `prompts.jsonl` shows it.
#[derive(Debug, Serialize)]
pub struct AnswerToken<'a> {
    pub id: u32,
    pub text: &'a str,
    pub source: crate::rehearsal::AnswerSource,
    pub skip: usize,
}

impl<'a> PromptLine<'a> {
    pub fn new(line: &'a InputLine, rec: &'a PromptRecord) -> Self {
        let item = &line.item;
        PromptLine {
            id: &item.id,
            line: line.line,
            category: item.category.as_deref(),
            prompt: &item.prompt,
            system: item.system.as_deref(),
            expected: item.answer.as_deref(),
            alts: &item.alts,
            answer_token: rec.rehearsal.as_ref().map(|r| AnswerToken {
                id: r.answer_id,
                text: &r.answer_token,
                source: r.source,
                skip: r.skip,
            }),
            greedy: rec.greedy.as_ref().map(|g| g.text.as_str()),
            n_tokens: rec.tokens.len(),
            correct: rec.correct,
            rehearsal: rec.rehearsal.as_ref(),
        }
    }
}

/// A file being written under a temporary name.
struct PendingFile {
    path: PathBuf,
    tmp: PathBuf,
}

impl PendingFile {
    pub fn create(path: &Path) -> Result<(Self, File)> {
        let tmp = temp_path(path);
        let f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok((
            PendingFile {
                path: path.to_path_buf(),
                tmp,
            },
            f,
        ))
    }

    /// Rename into place (the file must be flushed and closed).
    pub(crate) fn commit(self) -> Result<PathBuf> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(self.path)
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// A text file written through a buffer under a temporary name.
struct BufferedFile {
    file: PendingFile,
    w: BufWriter<File>,
}

impl BufferedFile {
    fn create(path: &Path) -> Result<Self> {
        let (file, f) = PendingFile::create(path)?;
        Ok(BufferedFile {
            file,
            w: BufWriter::new(f),
        })
    }

    /// Write one line (`\n` appended).
    fn line(&mut self, args: std::fmt::Arguments) -> Result<()> {
        writeln!(self.w, "{args}").map_err(io_err(&self.file.tmp))
    }

    /// Flush, sync and rename into place.
    fn finish(self) -> Result<PathBuf> {
        let f = self
            .w
            .into_inner()
            .map_err(|e| Error::io(&self.file.tmp, e.into_error()))?;
        f.sync_all().map_err(io_err(&self.file.tmp))?;
        drop(f);
        self.file.commit()
    }
}

/// `prompts.jsonl`.
pub(crate) struct PromptsWriter {
    out: BufferedFile,
}

impl PromptsWriter {
    pub fn create(path: &Path) -> Result<Self> {
        Ok(PromptsWriter {
            out: BufferedFile::create(path)?,
        })
    }

    pub fn push(&mut self, line: &PromptLine) -> Result<()> {
        let s = serde_json::to_string(line).map_err(|source| Error::Serialize {
            what: "a prompt line",
            source,
        })?;
        self.out.line(format_args!("{s}"))
    }

    pub fn finish(self) -> Result<PathBuf> {
        self.out.finish()
    }
}

/// A float for CSV: exact (it parses back to the same f64), plain decimals
/// where short, exponent form for very small or large magnitudes.
fn csv_float(x: f64) -> String {
    let a = x.abs();
    if x == 0.0 || (1e-4..1e15).contains(&a) || !x.is_finite() {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

/// A CSV field, quoted (RFC 4180) when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `cells.csv`.
pub(crate) struct CsvWriter {
    out: BufferedFile,
}

impl CsvWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let mut out = BufferedFile::create(path)?;
        out.line(format_args!("{}", CELL_COLUMNS.join(",")))?;
        Ok(CsvWriter { out })
    }

    pub fn push(&mut self, rec: &PromptRecord) -> Result<()> {
        let id = csv_field(&rec.item.id);
        let answer = rec.answer();
        let alts = rec.alts();
        let tokens: Vec<String> = rec.tokens.iter().map(|t| csv_field(&t.text)).collect();
        for row in 0..rec.n_rows {
            for (pos, tok) in rec.tokens.iter().enumerate() {
                let (ap, ar) = match answer {
                    Some(a) => {
                        let c = a.cells[row][pos];
                        (csv_float(c.prob), c.rank.to_string())
                    }
                    None => (String::new(), String::new()),
                };
                let top1 = rec.top1[row][pos];
                let join = |f: &dyn Fn(&TrackedToken) -> String| {
                    alts.iter().map(|t| f(t)).collect::<Vec<_>>().join(";")
                };
                self.out.line(format_args!(
                    "{id},{row},{pos},{},{},{},{},{},{top1},{},{ap},{ar},{},{}",
                    tokens[pos],
                    tok.kind.as_str(),
                    csv_float(rec.entropy[row][pos]),
                    csv_float(rec.kl_to_final[row][pos]),
                    csv_field(rec.text(top1)),
                    csv_float(rec.top1_prob[row][pos]),
                    join(&|t| csv_float(t.cells[row][pos].prob)),
                    join(&|t| t.cells[row][pos].rank.to_string()),
                ))?;
            }
        }
        Ok(())
    }

    pub fn finish(self) -> Result<PathBuf> {
        self.out.finish()
    }
}

#[cfg(feature = "parquet")]
pub use parquet_table::{cells_batch, cells_parquet, schema, ParquetWriter};

#[cfg(feature = "parquet")]
mod parquet_table {
    use std::sync::Arc;

    use arrow_array::builder::{Float64Builder, ListBuilder, UInt32Builder};
    use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};
    use arrow_schema::{DataType, Field, Schema, SchemaRef};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;

    use super::*;

    /// Rows per row group: bounds the writer's buffer (~10 MB).
    const ROW_GROUP: usize = 128 * 1024;

    /// `cells.parquet`: snappy-compressed, one record batch per prompt.
    pub struct ParquetWriter {
        file: PendingFile,
        schema: SchemaRef,
        w: ArrowWriter<File>,
    }

    fn pq_err(e: impl Into<crate::error::BoxError>) -> Error {
        Error::Output {
            what: "writing `cells.parquet`".into(),
            source: e.into(),
        }
    }

    /// The cells schema: [`CELL_COLUMNS`] with their types.
    pub fn schema() -> SchemaRef {
        let list = |item: DataType| DataType::List(Arc::new(Field::new("item", item, true)));
        // (type, nullable) of each column, in the order of CELL_COLUMNS.
        let types: [(DataType, bool); CELL_COLUMNS.len()] = [
            (DataType::Utf8, false),          // id
            (DataType::UInt32, false),        // row
            (DataType::UInt32, false),        // pos
            (DataType::Utf8, false),          // token
            (DataType::Utf8, false),          // kind
            (DataType::Float64, false),       // entropy
            (DataType::Float64, false),       // kl
            (DataType::Utf8, false),          // top1
            (DataType::UInt32, false),        // top1_id
            (DataType::Float64, false),       // top1_prob
            (DataType::Float64, true),        // answer_prob
            (DataType::UInt32, true),         // answer_rank
            (list(DataType::Float64), false), // alt_probs
            (list(DataType::UInt32), false),  // alt_ranks
        ];
        Arc::new(Schema::new(
            CELL_COLUMNS
                .iter()
                .zip(types)
                .map(|(name, (dt, nullable))| Field::new(*name, dt, nullable))
                .collect::<Vec<_>>(),
        ))
    }

    /// One prompt's rows of the cells table.
    pub fn cells_batch(schema: SchemaRef, rec: &PromptRecord) -> Result<RecordBatch> {
        let n = rec.tokens.len();
        let cells = rec.n_rows * n;
        let rows = || (0..rec.n_rows).flat_map(move |r| (0..n).map(move |p| (r, p)));
        let answer = rec.answer();
        let alts = rec.alts();
        let mut alt_probs = ListBuilder::with_capacity(Float64Builder::new(), cells);
        let mut alt_ranks = ListBuilder::with_capacity(UInt32Builder::new(), cells);
        for (r, p) in rows() {
            for t in &alts {
                alt_probs.values().append_value(t.cells[r][p].prob);
                alt_ranks.values().append_value(t.cells[r][p].rank);
            }
            alt_probs.append(true);
            alt_ranks.append(true);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                rec.item.id.as_str(),
                cells,
            ))),
            Arc::new(UInt32Array::from_iter_values(rows().map(|(r, _)| r as u32))),
            Arc::new(UInt32Array::from_iter_values(rows().map(|(_, p)| p as u32))),
            Arc::new(StringArray::from_iter_values(
                rows().map(|(_, p)| rec.tokens[p].text.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows().map(|(_, p)| rec.tokens[p].kind.as_str()),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows().map(|(r, p)| rec.entropy[r][p]),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows().map(|(r, p)| rec.kl_to_final[r][p]),
            )),
            Arc::new(StringArray::from_iter_values(
                rows().map(|(r, p)| rec.text(rec.top1[r][p])),
            )),
            Arc::new(UInt32Array::from_iter_values(
                rows().map(|(r, p)| rec.top1[r][p]),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows().map(|(r, p)| rec.top1_prob[r][p]),
            )),
            Arc::new(Float64Array::from_iter(
                rows().map(|(r, p)| answer.map(|a| a.cells[r][p].prob)),
            )),
            Arc::new(UInt32Array::from_iter(
                rows().map(|(r, p)| answer.map(|a| a.cells[r][p].rank)),
            )),
            Arc::new(alt_probs.finish()),
            Arc::new(alt_ranks.finish()),
        ];
        RecordBatch::try_new(schema, cols).map_err(pq_err)
    }

    fn properties() -> WriterProperties {
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP))
            .build()
    }

    /// The cells table of these records as Parquet bytes, as `cells.parquet`
    /// would hold them (the Python bindings hand these to pyarrow).
    pub fn cells_parquet(recs: &[PromptRecord]) -> Result<Vec<u8>> {
        let schema = schema();
        let mut w =
            ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties())).map_err(pq_err)?;
        for rec in recs {
            w.write(&cells_batch(schema.clone(), rec)?)
                .map_err(pq_err)?;
        }
        w.into_inner().map_err(pq_err)
    }

    impl ParquetWriter {
        pub fn create(path: &Path) -> Result<Self> {
            let (file, f) = PendingFile::create(path)?;
            let schema = schema();
            let w = ArrowWriter::try_new(f, schema.clone(), Some(properties())).map_err(pq_err)?;
            Ok(ParquetWriter { file, schema, w })
        }

        pub fn push(&mut self, rec: &PromptRecord) -> Result<()> {
            let batch = cells_batch(self.schema.clone(), rec)?;
            self.w.write(&batch).map_err(pq_err)
        }

        pub fn finish(self) -> Result<PathBuf> {
            let f = self.w.into_inner().map_err(pq_err)?;
            f.sync_all().map_err(|e| Error::io(&self.file.path, e))?;
            drop(f);
            self.file.commit()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_values_round_trip() {
        for x in [0.0, 1.0, 0.5, 1e-5, 1.234e-38, 3.0e20, 0.1 + 0.2, 12345.678] {
            let s = csv_float(x);
            assert_eq!(s.parse::<f64>().unwrap(), x, "{s}");
        }
        assert_eq!(csv_float(1e-5), "1e-5");
        assert_eq!(csv_field(" capital"), " capital");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
        assert_eq!(csv_field("\n"), "\"\n\"");
    }
}
