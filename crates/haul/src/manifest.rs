//! The manifest: a lazily read list of jobs in one of three formats.
//!
//! [`ManifestReader`] turns any `BufRead` into an iterator of `Result<Job, ManifestError>`.
//! It holds one line at a time: a manifest of any length costs the same memory, and a line
//! longer than [`MAX_LINE`] is a bad line, skipped without being held or shown. A bad line is
//! an error naming its line number (physical lines, counting from 1, in every format), and the
//! iterator goes on with the next line. A UTF-8 byte order mark at the start is ignored.
//! URLs in messages are shown redacted (passwords and signature values hidden).
//!
//! CSV is read one record per line: a quoted field may hold commas and quotes, not newlines.

use std::collections::BTreeMap;
use std::fmt;
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;
use url::Url;

use crate::job::{Job, SafeUrl, parse_hex};

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
    /// anything else → plain (see [`Format::named_by`] to tell "plain" from "says nothing").
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

    /// The format a file name names, if it names one (`.jsonl`, `.ndjson`, `.json`, `.csv`);
    /// `None` for `.txt`, no extension or anything else: the content decides (see [`sniff`]).
    #[must_use]
    pub fn named_by(path: &Path) -> Option<Self> {
        match Self::from_path(path) {
            Self::Plain => None,
            named => Some(named),
        }
    }

    /// The name of the format, as `--format` spells it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Jsonl => "jsonl",
            Self::Csv => "csv",
        }
    }
}

/// What the start of a manifest says about it, before any job is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// Its first meaningful line looks like this format.
    Looks(Format),
    /// Blank lines and comments only, or nothing at all.
    Empty,
}

/// Looks at the start of a manifest (`sample`: its first bytes, up to a few hundred KiB) and
/// says which format it looks like, or why it is not a manifest at all.
///
/// A first meaningful line starting with `{` is JSONL; one that reads as a CSV header with a
/// `url` column (and at least one comma) is CSV; anything else is plain. `expected` is the
/// format the caller was told (`--format`) or read off the name (`.csv`, `.jsonl`): when it is
/// CSV, the header must name a `url` column, and the error lists the columns it has.
///
/// # Errors
/// A message for the user: binary data, or a CSV header without a `url` column.
///
/// ```
/// use haul::manifest::{sniff, Sniffed};
/// use haul::Format;
/// assert_eq!(sniff(b"{\"url\": \"https://a/1\"}\n", None), Ok(Sniffed::Looks(Format::Jsonl)));
/// assert_eq!(sniff(b"id,url\n1,https://a/1\n", None), Ok(Sniffed::Looks(Format::Csv)));
/// assert_eq!(sniff(b"# list\nhttps://a/1\n", None), Ok(Sniffed::Looks(Format::Plain)));
/// assert!(sniff(b"name,link\nx,https://a/1\n", Some(Format::Csv)).unwrap_err().contains("name, link"));
/// assert!(sniff(b"\x7fELF\x02\x01\x00\x00", None).is_err());
/// ```
pub fn sniff(sample: &[u8], expected: Option<Format>) -> Result<Sniffed, String> {
    let head = &sample[..sample.len().min(8192)];
    if head.contains(&0) {
        return Err("it holds binary data, not lines of text (a manifest lists URLs, one per line)".to_owned());
    }
    // The first meaningful line, if the sample holds one whole (a cut line is judged as is).
    let text = String::from_utf8_lossy(sample);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let Some(first) = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .find(|l| !l.trim().is_empty() && (expected == Some(Format::Csv) || !l.trim().starts_with('#')))
    else {
        return Ok(Sniffed::Empty);
    };
    if expected == Some(Format::Csv) {
        let header = csv_fields(first)?;
        return CsvColumns::from_header(&header).map(|_| Sniffed::Looks(Format::Csv));
    }
    let trimmed = first.trim();
    if trimmed.starts_with('{') {
        return Ok(Sniffed::Looks(Format::Jsonl));
    }
    if trimmed.contains(',')
        && !trimmed.contains("://")
        && csv_fields(first).is_ok_and(|h| h.iter().any(|f| f.trim().eq_ignore_ascii_case("url")))
    {
        return Ok(Sniffed::Looks(Format::Csv));
    }
    Ok(Sniffed::Looks(Format::Plain))
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

/// The longest manifest line accepted, in bytes.
pub const MAX_LINE: usize = 1024 * 1024;

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
        buf: Vec<u8>,
        line: u64,
        format: Format,
        /// CSV only: the column positions, once the header line is read.
        columns: Option<CsvColumns>,
    },
    Failed(Option<ManifestError>),
}

impl<R: BufRead> ManifestReader<R> {
    /// A reader of `format` over `reader`, keyed by id-or-URL.
    pub fn new(reader: R, format: Format) -> Self {
        Self {
            lines: Lines::Text {
                reader,
                buf: Vec::new(),
                line: 0,
                format,
                columns: None,
            },
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

/// Reads one line into `buf` (without its end), keeping at most `max` bytes: returns `None`
/// at the end of input, else whether the line was longer than `max` (the rest is skipped).
fn read_bounded_line(reader: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(any.then_some(too_long));
        }
        any = true;
        let (chunk, found) = match memchr_newline(available) {
            Some(i) => (&available[..i], Some(i)),
            None => (available, None),
        };
        if !too_long {
            if buf.len() + chunk.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let used = found.map_or(available.len(), |i| i + 1);
        reader.consume(used);
        if found.is_some() {
            return Ok(Some(too_long));
        }
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
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
                columns,
            } => loop {
                *line += 1;
                let bad = |line: u64, reason: String| ManifestError { line, reason };
                match read_bounded_line(reader, buf, MAX_LINE) {
                    Ok(None) => return None,
                    Ok(Some(false)) => {}
                    Ok(Some(true)) => {
                        break Err(bad(*line, format!("longer than {} bytes (not shown)", MAX_LINE)));
                    }
                    Err(e) => {
                        let err = bad(*line, format!("cannot read: {e}"));
                        self.lines = Lines::Failed(Some(err));
                        return self.next();
                    }
                }
                let Ok(mut text) = std::str::from_utf8(buf) else {
                    break Err(bad(*line, "not valid UTF-8".into()));
                };
                if *line == 1 {
                    text = text.strip_prefix('\u{feff}').unwrap_or(text);
                }
                let text = text.trim_end_matches('\r');
                let trimmed = text.trim();
                if trimmed.is_empty() || (trimmed.starts_with('#') && *format != Format::Csv) {
                    continue;
                }
                let parsed = match format {
                    Format::Jsonl => parse_json(trimmed),
                    Format::Plain => parse_plain(text),
                    Format::Csv => match columns {
                        None => {
                            match csv_fields(text).and_then(|header| CsvColumns::from_header(&header)) {
                                Ok(found) => {
                                    *columns = Some(found);
                                    continue;
                                }
                                Err(reason) => {
                                    // Without its header no line of the file can be read.
                                    let err = bad(*line, reason);
                                    self.lines = Lines::Failed(None);
                                    break Err(err);
                                }
                            }
                        }
                        Some(columns) => csv_fields(text).and_then(|record| columns.job(&record)),
                    },
                };
                break parsed.map_err(|reason| bad(*line, reason)).map(|mut job| {
                    if job.line == 0 {
                        job.line = *line;
                    }
                    job
                });
            },
        };
        Some(item.map(|mut job| {
            if key == ArchiveKey::Url {
                job.url.as_str().clone_into(&mut job.id);
            }
            job
        }))
    }
}

/// The fields of one CSV line.
fn csv_fields(line: &str) -> Result<csv::StringRecord, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(line.len().max(64))
        .from_reader(line.as_bytes());
    let mut record = csv::StringRecord::new();
    match reader.read_record(&mut record) {
        Ok(_) => Ok(record),
        Err(e) => Err(format!("invalid CSV: {e}")),
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
    let url = Url::parse(text.trim()).map_err(|e| format!("invalid URL {:?}: {e}", redact_text(text)))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "unsupported scheme {other:?} in {:?} (only http and https)",
                SafeUrl(&url).to_string()
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("URL has no host: {:?}", SafeUrl(&url).to_string()));
    }
    Ok(url)
}

/// Text that failed to parse as a URL, for a message: a password between `://` and `@` is
/// hidden, secret-looking query values too, and it is cut at 200 characters.
fn redact_text(text: &str) -> String {
    let text = text.trim();
    if let Ok(url) = Url::parse(text) {
        return SafeUrl(&url).to_string();
    }
    let mut shown = text.to_owned();
    if let Some(start) = shown.find("://").map(|i| i + 3) {
        let end = shown[start..].find(['/', '?', '#']).map_or(shown.len(), |i| start + i);
        if let Some(at) = shown[start..end].rfind('@').map(|i| start + i)
            && let Some(colon) = shown[start..at].find(':').map(|i| start + i)
        {
            shown.replace_range(colon + 1..at, "***");
        }
    }
    if let Some((head, query)) = shown.split_once('?') {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if crate::job::is_secret_param(name) => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        shown = format!("{head}?{}", pairs.join("&"));
    }
    if shown.chars().count() > 200 {
        shown = shown.chars().take(200).chain("…".chars()).collect();
    }
    shown
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
    /// The line of the original manifest (`haul failed` writes it, so a retried job is
    /// reported under the line it first came from).
    #[serde(default)]
    line: Option<u64>,
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
    job.line = record.line.unwrap_or(0);
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
        let header = {
            let mut cleaned = csv::StringRecord::new();
            for (i, field) in header.iter().enumerate() {
                cleaned.push_field(if i == 0 {
                    field.trim_start_matches('\u{feff}')
                } else {
                    field
                });
            }
            cleaned
        };
        let find = |name: &str| header.iter().position(|h| h.trim().eq_ignore_ascii_case(name));
        Ok(Self {
            url: find("url").ok_or_else(|| {
                let names: Vec<&str> = header.iter().map(str::trim).collect();
                format!("CSV header has no \"url\" column (its columns: {})", names.join(", "))
            })?,
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
    fn byte_order_mark_is_ignored_in_every_format() {
        let plain = read("\u{feff}http://h/a\n", Format::Plain);
        assert_eq!(plain[0].as_ref().unwrap().url.as_str(), "http://h/a");
        let jsonl = read("\u{feff}{\"url\":\"http://h/a\"}\n", Format::Jsonl);
        assert!(jsonl[0].is_ok(), "{jsonl:?}");
        let csv = read("\u{feff}url,path\nhttp://h/a,a\n", Format::Csv);
        assert_eq!(csv[0].as_ref().unwrap().path.as_deref(), Some("a"));
    }

    #[test]
    fn csv_line_numbers_are_physical_lines_with_crlf() {
        let items = read(
            "url,path\r\nhttp://h/a,a\r\n\r\nnope,b\r\nhttp://h/c,\"c,1\"\r\n",
            Format::Csv,
        );
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().unwrap().line, 2);
        assert_eq!(items[1].as_ref().unwrap_err().line, 4);
        let third = items[2].as_ref().unwrap();
        assert_eq!((third.line, third.path.as_deref()), (5, Some("c,1")));
        let no_url = read("id,link\n1,http://h/a\n", Format::Csv);
        let err = no_url[0].as_ref().unwrap_err();
        assert!(err.reason.contains("its columns: id, link"), "{err}");
    }

    #[test]
    fn long_lines_are_bad_lines_not_held_or_shown() {
        let long = format!("http://h/{}\nhttp://h/b\n", "x".repeat(MAX_LINE + 10));
        let items = read(&long, Format::Plain);
        assert_eq!(items.len(), 2);
        let err = items[0].as_ref().unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.reason.contains("not shown") && err.reason.len() < 100, "{err}");
        assert_eq!(items[1].as_ref().unwrap().line, 2);
    }

    #[test]
    fn bad_line_messages_hide_passwords() {
        for text in [
            "ftp://u:s3cret@h/a",
            "http://u:s3cret@/a",
            "http://u:s3cret@h:99999/a?token=t0k",
        ] {
            let err = read(&format!("{text}\n"), Format::Plain).remove(0).unwrap_err();
            assert!(!err.reason.contains("s3cret") && !err.reason.contains("t0k"), "{err}");
        }
    }

    #[test]
    fn archive_key_url_ignores_id() {
        let items: Vec<_> = ManifestReader::new("{\"url\":\"http://h/a\",\"id\":\"x\"}\n".as_bytes(), Format::Jsonl)
            .archive_key(ArchiveKey::Url)
            .collect();
        assert_eq!(items[0].as_ref().unwrap().id, "http://h/a");
    }
}
