//! The manifest: a lazily read list of jobs in one of three formats.
//!
//! [`ManifestReader`] turns any `BufRead` into an iterator of `Result<Job, ManifestError>`.
//! It holds one line at a time: a manifest of any length costs the same memory. A bad line is
//! an error naming its line number, and the iterator goes on with the next line.

use std::collections::BTreeMap;
use std::fmt;
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;
use url::Url;

use crate::job::{Job, parse_hex};

/// The syntax of a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One URL per line, optional `<TAB>relative/path`; `#` comments and blank lines ignored.
    Plain,
    /// One JSON object per line with `url` and optional `path`, `id`, `size`, `sha256`, `md5`,
    /// `headers`.
    Jsonl,
    /// CSV with a header row naming the same columns as JSONL (`headers` as a JSON object).
    Csv,
}

impl Format {
    /// Picks the format from a file name: `.jsonl`/`.ndjson`/`.json` → JSONL, `.csv` → CSV,
    /// anything else → plain.
    ///
    /// ```
    /// use haul::Format;
    /// assert_eq!(Format::from_path("list.jsonl".as_ref()), Format::Jsonl);
    /// assert_eq!(Format::from_path("urls.txt".as_ref()), Format::Plain);
    /// ```
    #[must_use]
    pub fn from_path(path: &Path) -> Self {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("jsonl" | "ndjson" | "json") => Self::Jsonl,
            Some("csv") => Self::Csv,
            _ => Self::Plain,
        }
    }
}

/// Which manifest field keys a job in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveKey {
    /// The manifest's `id` when present, else the URL (the default).
    #[default]
    IdOrUrl,
    /// Always the URL, ignoring `id`.
    Url,
}

/// A manifest line that could not be read as a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ManifestError {
    /// The 1-based line number (0 when the input itself failed).
    pub line: u64,
    /// Why the line was refused.
    pub reason: String,
}

/// Reads jobs one line at a time.
///
/// ```
/// use haul::{Format, ManifestReader};
/// let text = "# photos\nhttps://example.com/a.jpg\nnot a url\nhttps://example.com/b.jpg\tb/b.jpg\n";
/// let items: Vec<_> = ManifestReader::new(text.as_bytes(), Format::Plain).collect();
/// assert_eq!(items.len(), 3);
/// assert_eq!(items[1].as_ref().unwrap_err().line, 3);
/// assert_eq!(items[2].as_ref().unwrap().path.as_deref(), Some("b/b.jpg"));
/// ```
pub struct ManifestReader<R> {
    lines: Lines<R>,
    key: ArchiveKey,
}

enum Lines<R> {
    Text {
        reader: R,
        buf: String,
        line: u64,
        format: Format,
    },
    Csv {
        records: Box<csv::StringRecordsIntoIter<R>>,
        columns: CsvColumns,
    },
    Failed(Option<ManifestError>),
}

impl<R: BufRead> ManifestReader<R> {
    /// A reader of `format` over `reader`, keyed by id-or-URL.
    pub fn new(reader: R, format: Format) -> Self {
        let lines = match format {
            Format::Plain | Format::Jsonl => Lines::Text {
                reader,
                buf: String::new(),
                line: 0,
                format,
            },
            Format::Csv => {
                let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
                match csv.headers().map(CsvColumns::from_header) {
                    Ok(Ok(columns)) => Lines::Csv {
                        records: Box::new(csv.into_records()),
                        columns,
                    },
                    Ok(Err(reason)) => Lines::Failed(Some(ManifestError { line: 1, reason })),
                    Err(e) => Lines::Failed(Some(ManifestError {
                        line: 1,
                        reason: e.to_string(),
                    })),
                }
            }
        };
        Self {
            lines,
            key: ArchiveKey::default(),
        }
    }

    /// Chooses the archive key (see [`ArchiveKey`]).
    #[must_use]
    pub fn archive_key(mut self, key: ArchiveKey) -> Self {
        self.key = key;
        self
    }
}

impl<R: BufRead> Iterator for ManifestReader<R> {
    type Item = Result<Job, ManifestError>;

    fn next(&mut self) -> Option<Self::Item> {
        let key = self.key;
        let item = match &mut self.lines {
            Lines::Failed(err) => return err.take().map(Err),
            Lines::Text {
                reader,
                buf,
                line,
                format,
            } => loop {
                buf.clear();
                *line += 1;
                match reader.read_line(buf) {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(e) => {
                        // Invalid UTF-8 only spoils this line; other read errors end the input.
                        let err = ManifestError {
                            line: *line,
                            reason: format!("cannot read: {e}"),
                        };
                        if e.kind() != std::io::ErrorKind::InvalidData {
                            self.lines = Lines::Failed(None);
                        }
                        break Err(err);
                    }
                }
                let text = buf.trim_end_matches(['\n', '\r']);
                let trimmed = text.trim();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    continue;
                }
                let parsed = match format {
                    Format::Jsonl => parse_json(trimmed),
                    _ => parse_plain(text),
                };
                break parsed
                    .map_err(|reason| ManifestError { line: *line, reason })
                    .map(|mut job| {
                        job.line = *line;
                        job
                    });
            },
            Lines::Csv { records, columns } => {
                let record = records.next()?;
                match record {
                    Ok(record) => {
                        let line = record.position().map_or(0, csv::Position::line);
                        columns
                            .job(&record)
                            .map(|mut job| {
                                job.line = line;
                                job
                            })
                            .map_err(|reason| ManifestError { line, reason })
                    }
                    Err(e) => {
                        let line = e.position().map_or(0, csv::Position::line);
                        Err(ManifestError {
                            line,
                            reason: e.to_string(),
                        })
                    }
                }
            }
        };
        Some(item.map(|mut job| {
            if key == ArchiveKey::Url {
                job.url.as_str().clone_into(&mut job.id);
            }
            job
        }))
    }
}

impl<R> fmt::Debug for ManifestReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManifestReader")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Parses a URL for download: http or https with a host.
///
/// # Errors
/// A reason naming what is wrong with the text.
///
/// ```
/// assert!(haul::parse_url("https://example.com/a.jpg").is_ok());
/// assert!(haul::parse_url("ftp://example.com/a.jpg").unwrap_err().contains("unsupported scheme"));
/// ```
pub fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("invalid URL {text:?}: {e}"))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "unsupported scheme {other:?} in {text:?} (only http and https)"
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("URL has no host: {text:?}"));
    }
    Ok(url)
}

fn parse_plain(text: &str) -> Result<Job, String> {
    let (url, path) = match text.split_once('\t') {
        Some((url, path)) => (url, Some(path.trim())),
        None => (text, None),
    };
    let mut job = Job::new(parse_url(url)?);
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        job.path = Some(path.to_owned());
    }
    Ok(job)
}

/// One JSONL object; unknown fields are ignored so manifests can carry their own data.
#[derive(Deserialize)]
struct Record {
    url: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    md5: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
}

fn parse_json(text: &str) -> Result<Job, String> {
    let record: Record = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let id = match record.id {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(other) => return Err(format!("id must be a string or number, not {other}")),
    };
    let size = record.size.map(|s| s.to_string());
    let fields = Fields {
        url: &record.url,
        path: record.path.as_deref(),
        id: id.as_deref(),
        size: size.as_deref(),
        sha256: record.sha256.as_deref(),
        md5: record.md5.as_deref(),
    };
    let mut job = fields.job()?;
    job.headers = record.headers.unwrap_or_default().into_iter().collect();
    Ok(job)
}

/// The manifest fields common to JSONL and CSV, as text.
struct Fields<'a> {
    url: &'a str,
    path: Option<&'a str>,
    id: Option<&'a str>,
    size: Option<&'a str>,
    sha256: Option<&'a str>,
    md5: Option<&'a str>,
}

impl Fields<'_> {
    fn job(&self) -> Result<Job, String> {
        let mut job = Job::new(parse_url(self.url)?);
        if let Some(id) = self.id.filter(|s| !s.is_empty()) {
            id.clone_into(&mut job.id);
        }
        job.path = self.path.filter(|s| !s.is_empty()).map(str::to_owned);
        if let Some(size) = self.size.filter(|s| !s.is_empty()) {
            job.size = Some(
                size.trim()
                    .parse()
                    .map_err(|_| format!("size is not a number: {size:?}"))?,
            );
        }
        if let Some(hex) = self.sha256.filter(|s| !s.is_empty()) {
            job.sha256 = Some(parse_hex(hex).ok_or_else(|| format!("sha256 is not 64 hex digits: {hex:?}"))?);
        }
        if let Some(hex) = self.md5.filter(|s| !s.is_empty()) {
            job.md5 = Some(parse_hex(hex).ok_or_else(|| format!("md5 is not 32 hex digits: {hex:?}"))?);
        }
        Ok(job)
    }
}

/// Column positions in a CSV manifest.
struct CsvColumns {
    url: usize,
    path: Option<usize>,
    id: Option<usize>,
    size: Option<usize>,
    sha256: Option<usize>,
    md5: Option<usize>,
    headers: Option<usize>,
}

impl CsvColumns {
    fn from_header(header: &csv::StringRecord) -> Result<Self, String> {
        let find = |name: &str| header.iter().position(|h| h.trim().eq_ignore_ascii_case(name));
        Ok(Self {
            url: find("url").ok_or("CSV header has no \"url\" column")?,
            path: find("path"),
            id: find("id"),
            size: find("size"),
            sha256: find("sha256"),
            md5: find("md5"),
            headers: find("headers"),
        })
    }

    fn job(&self, record: &csv::StringRecord) -> Result<Job, String> {
        let get = |i: Option<usize>| i.and_then(|i| record.get(i));
        let fields = Fields {
            url: record.get(self.url).ok_or("missing url")?,
            path: get(self.path),
            id: get(self.id),
            size: get(self.size),
            sha256: get(self.sha256),
            md5: get(self.md5),
        };
        let mut job = fields.job()?;
        if let Some(text) = get(self.headers).filter(|s| !s.trim().is_empty()) {
            let map: BTreeMap<String, String> =
                serde_json::from_str(text).map_err(|e| format!("headers must be a JSON object of strings: {e}"))?;
            job.headers = map.into_iter().collect();
        }
        Ok(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, format: Format) -> Vec<Result<Job, ManifestError>> {
        ManifestReader::new(text.as_bytes(), format).collect()
    }

    #[test]
    fn plain_skips_comments_and_names_bad_lines() {
        let items = read(
            "\n# c\nhttp://h/a\nftp://h/b\nhttp://h/c\tout/c.bin\n  \n",
            Format::Plain,
        );
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().unwrap().line, 3);
        let err = items[1].as_ref().unwrap_err();
        assert_eq!(err.line, 4);
        assert!(err.reason.contains("unsupported scheme"), "{err}");
        assert_eq!(items[2].as_ref().unwrap().path.as_deref(), Some("out/c.bin"));
    }

    #[test]
    fn jsonl_fields() {
        let sha = "a".repeat(64);
        let text = format!(
            "{{\"url\":\"http://h/a\",\"id\":42,\"size\":10,\"sha256\":\"{sha}\",\"path\":\"x/a\",\"headers\":{{\"X-A\":\"1\"}}}}\n{{\"path\":\"p\"}}\n{{\"url\":\"http://h/b\",\"md5\":\"zz\"}}\n"
        );
        let items = read(&text, Format::Jsonl);
        let job = items[0].as_ref().unwrap();
        assert_eq!(job.id, "42");
        assert_eq!(job.size, Some(10));
        assert_eq!(job.sha256, Some([0xaa; 32]));
        assert_eq!(job.headers, vec![("X-A".to_owned(), "1".to_owned())]);
        assert_eq!(items[1].as_ref().unwrap_err().line, 2);
        assert!(items[2].as_ref().unwrap_err().reason.contains("md5"));
    }

    #[test]
    fn csv_with_header_and_line_numbers() {
        let text = "id,url,path,size\n1,http://h/a,a.bin,3\n2,nope,b.bin,\n3,http://h/c,,x\n";
        let items = read(text, Format::Csv);
        assert_eq!(items.len(), 3);
        let job = items[0].as_ref().unwrap();
        assert_eq!(
            (job.id.as_str(), job.path.as_deref(), job.size, job.line),
            ("1", Some("a.bin"), Some(3), 2)
        );
        assert_eq!(items[1].as_ref().unwrap_err().line, 3);
        assert!(items[2].as_ref().unwrap_err().reason.contains("size"));
        let missing = read("id,path\n1,a\n", Format::Csv);
        assert!(missing[0].as_ref().unwrap_err().reason.contains("url"));
    }

    #[test]
    fn archive_key_url_ignores_id() {
        let items: Vec<_> = ManifestReader::new("{\"url\":\"http://h/a\",\"id\":\"x\"}\n".as_bytes(), Format::Jsonl)
            .archive_key(ArchiveKey::Url)
            .collect();
        assert_eq!(items[0].as_ref().unwrap().id, "http://h/a");
    }
}
