//! Output names: derive, sanitise and confine every path to the output directory.
//!
//! A job's path comes from the manifest (checked, refused when unsafe) or from its URL
//! (sanitised). Either way the result is a [`RelPath`]: `/`-separated, relative, free of `..`,
//! `.`, empty, NUL and control characters, with each component short enough for the file system.
//!
//! Reserved: a component that is haul's state directory (`.haul`, in any case) is refused in a
//! manifest path and renamed `_haul` in a derived name, so no job can reach haul's own files.
//! Invisible format characters (bidi controls such as U+202E, zero-width spaces, the BOM) are
//! replaced by `_` in every name: `photo\u{202E}gpj.exe` cannot pass for `photoexe.jpg`.

use std::hash::{BuildHasher, Hasher};

use url::Url;

/// How a URL maps to a path when the manifest gives none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// The last path segment of the URL (`index.html` when it is empty).
    #[default]
    Flat,
    /// `host/path/segments` as in the URL.
    Mirror,
}

/// The longest file-name component we create, in bytes. Linux file systems allow 255; we keep
/// room for the `.part` suffix and a `(N)` from `--on-exists rename`.
pub(crate) const MAX_COMPONENT: usize = 240;

/// A checked relative path inside the output directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelPath(String);

impl RelPath {
    /// The path as `/`-separated text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A 64-bit fingerprint of a relative path, used to detect two jobs writing one file
    /// (8 bytes per job in memory instead of the whole path).
    /// On a file system that folds case, `A.jpg` and `a.jpg` are one file: compare lowercased.
    pub(crate) fn fingerprint_of(rel: &str, folds_case: bool) -> u64 {
        if folds_case {
            fingerprint(rel.to_lowercase().as_bytes())
        } else {
            fingerprint(rel.as_bytes())
        }
    }
}

fn fingerprint(bytes: &[u8]) -> u64 {
    // A fixed-key SipHash: the fingerprint only has to be stable within one run.
    let mut hasher =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().build_hasher();
    hasher.write(bytes);
    hasher.finish()
}

/// The output path of a job: the manifest's `path` when given (refused if unsafe), else derived
/// from the URL by `layout`.
///
/// # Errors
/// A message naming the refused path and why.
///
/// ```
/// use haul::store::{Layout, output_path};
/// let url = url::Url::parse("https://cdn.example/p/7/photo.jpg?w=800").unwrap();
/// assert_eq!(output_path(None, &url, Layout::Flat).unwrap().as_str(), "photo.jpg");
/// assert_eq!(output_path(None, &url, Layout::Mirror).unwrap().as_str(), "cdn.example/p/7/photo.jpg");
/// assert!(output_path(Some("../x.jpg"), &url, Layout::Flat).is_err());
/// ```
pub fn output_path(manifest_path: Option<&str>, url: &Url, layout: Layout) -> Result<RelPath, String> {
    match manifest_path {
        Some(path) => checked_path(path),
        None => Ok(derived_path(url, layout)),
    }
}

/// A file-name template (`--name`): text with fields in braces, rendered for each job that has
/// no `path` in the manifest, then checked like a manifest path (relative, no `..`; `/` makes
/// directories).
///
/// Fields: `{id}` (the manifest's id, else the URL), `{host}`, `{path}` (the URL's path, its
/// directories kept), `{name}` (its last segment), `{stem}` and `{ext}` (`{name}` split before
/// its last dot; `{ext}` keeps the dot), `{query}`, `{hash}` (8 hex digits of the URL's
/// SHA-256) and `{line}` (the manifest line). Every value is sanitised like a URL-derived name.
///
/// ```
/// use haul::store::NameTemplate;
/// let t = NameTemplate::parse("{host}/{stem}-{hash}{ext}").unwrap();
/// let job = haul::Job::new(url::Url::parse("https://cdn.example/p/photo.jpg?w=800").unwrap());
/// assert_eq!(t.render(&job).unwrap().as_str(), "cdn.example/photo-1341603b.jpg");
/// assert!(NameTemplate::parse("{nope}").unwrap_err().contains("{nope}"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Id,
    Host,
    Path,
    Name,
    Stem,
    Ext,
    Query,
    Hash,
    Line,
}

const FIELDS: [(&str, Field); 9] = [
    ("id", Field::Id),
    ("host", Field::Host),
    ("path", Field::Path),
    ("name", Field::Name),
    ("stem", Field::Stem),
    ("ext", Field::Ext),
    ("query", Field::Query),
    ("hash", Field::Hash),
    ("line", Field::Line),
];

impl NameTemplate {
    /// Parses a template.
    ///
    /// # Errors
    /// A message naming an unknown field or an unclosed brace, and listing the known fields.
    pub fn parse(text: &str) -> Result<Self, String> {
        let known = || {
            FIELDS
                .iter()
                .map(|(n, _)| format!("{{{n}}}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let Some(close) = rest[open..].find('}').map(|i| open + i) else {
                return Err(format!(
                    "unclosed '{{' in the name template {text:?} (fields: {})",
                    known()
                ));
            };
            let name = &rest[open + 1..close];
            let field = FIELDS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, f)| *f)
                .ok_or_else(|| format!("unknown field {{{name}}} in the name template (fields: {})", known()))?;
            parts.push(Part::Field(field));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err("the name template is empty".to_owned());
        }
        Ok(Self { parts })
    }

    /// The path of `job` under this template.
    ///
    /// # Errors
    /// The rendered path is refused (see [`checked_path`]).
    pub fn render(&self, job: &crate::Job) -> Result<RelPath, String> {
        let url = &job.url;
        let segments = url
            .path_segments()
            .map(|s| s.map(decode_component).filter(|s| !s.is_empty()).collect::<Vec<_>>())
            .unwrap_or_default();
        let name = segments.last().cloned().unwrap_or_else(|| "index.html".to_owned());
        let (stem, ext) = match name.rfind('.') {
            Some(dot) if dot > 0 => (name[..dot].to_owned(), name[dot..].to_owned()),
            _ => (name.clone(), String::new()),
        };
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(field) => out.push_str(&match field {
                    Field::Id => sanitize(&job.id),
                    Field::Host => match url.port() {
                        Some(port) => sanitize(&format!("{}_{port}", url.host_str().unwrap_or("host"))),
                        None => sanitize(url.host_str().unwrap_or("host")),
                    },
                    Field::Path if segments.is_empty() => "index.html".to_owned(),
                    Field::Path => segments.iter().map(|s| sanitize(s)).collect::<Vec<_>>().join("/"),
                    Field::Name => sanitize(&name),
                    Field::Stem => sanitize(&stem),
                    Field::Ext if ext.is_empty() => String::new(),
                    Field::Ext => sanitize(&ext),
                    Field::Query => url.query().filter(|q| !q.is_empty()).map_or_else(String::new, sanitize),
                    Field::Hash => short_hash(url.as_str()),
                    Field::Line => job.line.to_string(),
                }),
            }
        }
        checked_path(&out).map_err(|why| format!("the name template gave {why}"))
    }
}

/// The destination named by a server (`Content-Disposition`) for a job bound for `rel`: the
/// server's file name (already sanitised, see [`super::disposition_filename`]) in `rel`'s
/// directory. Every naming rule of haul lives in this module.
pub(crate) fn with_file_name(rel: &str, name: &str) -> String {
    match rel.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{name}"),
        None => name.to_owned(),
    }
}

/// Checks a path given by the manifest: relative, no `..`, no control characters.
///
/// ```
/// use haul::store::checked_path;
/// assert_eq!(checked_path("a/./b.jpg").unwrap().as_str(), "a/b.jpg");
/// assert!(checked_path("../etc/passwd").is_err());
/// assert!(checked_path("/etc/passwd").is_err());
/// ```
///
/// # Errors
/// A message naming the path and the reason it is refused.
pub fn checked_path(path: &str) -> Result<RelPath, String> {
    let refuse = |why: &str| Err(format!("refused path {path:?}: {why}"));
    if path.starts_with('/') || path.starts_with('\\') {
        return refuse("absolute paths are not allowed");
    }
    if path.len() >= 2 && path.as_bytes()[1] == b':' && path.as_bytes()[0].is_ascii_alphabetic() {
        return refuse("drive letters are not allowed");
    }
    if path.chars().any(char::is_control) {
        return refuse("control characters are not allowed");
    }
    let mut parts = Vec::new();
    for component in path.split(['/', '\\']) {
        match component {
            "" | "." => {}
            ".." => return refuse("'..' leaves the output directory"),
            name if is_reserved(name) => {
                return refuse("'.haul' is haul's own state directory");
            }
            name => parts.push(shorten(&map_invisible(name))),
        }
    }
    if parts.is_empty() {
        return refuse("no file name");
    }
    Ok(RelPath(parts.join("/")))
}

/// A short, stable hash of `text` (8 hex digits of its SHA-256): the same in every haul version.
fn short_hash(text: &str) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes());
    crate::job::to_hex(&digest[..4])
}

/// The decoded path segments of a URL, the last one never empty (`index.html`). When the query
/// names the file (`/media?id=1`: a last segment without an extension, and a query), the last
/// segment gets a short hash of the query (`media-3f9a0c1e`), so `?id=1` and `?id=2` land in
/// two files, the same two on every run.
fn url_segments(url: &Url) -> Vec<String> {
    let mut segments: Vec<String> = url
        .path_segments()
        .map(|s| s.map(decode_component).collect())
        .unwrap_or_default();
    let last_empty = segments.last().is_none_or(String::is_empty);
    if last_empty {
        segments.pop();
        segments.push("index.html".to_owned());
    }
    // Signatures, tokens and expiry times change each time a URL is signed again: they do
    // not name the file, and the name stays the same.
    let naming: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(name, _)| !crate::job::is_secret_param(name) && !name.eq_ignore_ascii_case("expires"))
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    if !naming.is_empty()
        && let Some(last) = segments.last_mut()
        && !last.contains('.')
    {
        let query: Vec<String> = naming.iter().map(|(n, v)| format!("{n}={v}")).collect();
        *last = format!("{last}-{}", short_hash(&query.join("&")));
    }
    segments
}

/// A path made from the URL; never fails (every component is sanitised).
fn derived_path(url: &Url, layout: Layout) -> RelPath {
    let segments = url_segments(url);
    let mut parts: Vec<String> = Vec::new();
    if layout == Layout::Mirror {
        let host = url.host_str().unwrap_or("host");
        parts.push(match url.port() {
            Some(port) => sanitize(&format!("{host}_{port}")),
            None => sanitize(host),
        });
        parts.extend(segments.iter().filter(|s| !s.is_empty()).map(|s| sanitize(s)));
    } else {
        parts.push(sanitize(segments.last().map_or("index.html", String::as_str)));
    }
    RelPath(parts.join("/"))
}

fn decode_component(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes one component safe: no separators, no control or invisible format characters, not
/// `.`/`..`, not haul's state directory, not too long.
pub(crate) fn sanitize(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() || is_invisible(c) {
                '_'
            } else {
                c
            }
        })
        .collect();
    match cleaned.as_str() {
        "" | "." | ".." => "_".to_owned(),
        name if is_reserved(name) => format!("_{}", &name[1..]),
        _ => shorten(&cleaned),
    }
}

/// True for haul's state directory name, in any case (a case-folding file system would see
/// `.HAUL` as `.haul`).
fn is_reserved(component: &str) -> bool {
    component.eq_ignore_ascii_case(crate::store::STATE_DIR)
}

/// Unicode format characters that change how a name is shown without being seen: bidi
/// embeddings, overrides and isolates, zero-width characters, the soft hyphen, the BOM.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

fn map_invisible(name: &str) -> String {
    name.chars().map(|c| if is_invisible(c) { '_' } else { c }).collect()
}

/// Shortens a component over [`MAX_COMPONENT`] bytes deterministically: a prefix, a hash of
/// the whole name, and the original extension, so distinct long names stay distinct.
fn shorten(name: &str) -> String {
    if name.len() <= MAX_COMPONENT {
        return name.to_owned();
    }
    let ext = match name.rfind('.') {
        Some(dot) if name.len() - dot <= 16 && dot > 0 => &name[dot..],
        _ => "",
    };
    // SHA-256 rather than std's hasher: the name must stay the same across haul versions.
    let digest = <sha2::Sha256 as sha2::Digest>::digest(name.as_bytes());
    let hash = format!("~{}", crate::job::to_hex(&digest[..8]));
    let mut keep = MAX_COMPONENT - hash.len() - ext.len();
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{hash}{ext}", &name[..keep])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn refuses_escapes() {
        for bad in [
            "../x",
            "a/../../x",
            "/abs",
            "C:/win",
            "a\0b",
            "a\nb",
            "",
            "./",
            "\\\\server\\x",
        ] {
            assert!(checked_path(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(checked_path("a//b/./c").unwrap().as_str(), "a/b/c");
        assert_eq!(checked_path("a\\b").unwrap().as_str(), "a/b");
    }

    #[test]
    fn query_named_files_get_distinct_stable_names() {
        let name = |u: &str| output_path(None, &url(u), Layout::Flat).unwrap().as_str().to_owned();
        let (one, two) = (name("https://h/media?id=1"), name("https://h/media?id=2"));
        assert!(
            one.starts_with("media-") && two.starts_with("media-") && one != two,
            "{one} {two}"
        );
        assert_eq!(one, name("https://h/media?id=1"), "stable");
        // Signed again (a new signature, a new expiry): the same file.
        assert_eq!(
            name("https://h/obj?id=1&X-Amz-Signature=aa&Expires=1"),
            name("https://h/obj?id=1&X-Amz-Signature=bb&Expires=2")
        );
        assert_eq!(
            name("https://h/obj?token=abc"),
            "obj",
            "nothing but a secret: the plain name"
        );
        // A name with an extension is the file's name; the query does not change it.
        assert_eq!(name("https://h/photo.jpg?w=800"), "photo.jpg");
    }

    #[test]
    fn flat_and_mirror_layouts() {
        let u = url("http://h:8080/p/q/file%20one.jpg?x=1");
        assert_eq!(output_path(None, &u, Layout::Flat).unwrap().as_str(), "file one.jpg");
        assert_eq!(
            output_path(None, &u, Layout::Mirror).unwrap().as_str(),
            "h_8080/p/q/file one.jpg"
        );
        assert_eq!(
            output_path(None, &url("http://h/dir/"), Layout::Flat).unwrap().as_str(),
            "index.html"
        );
        assert_eq!(
            output_path(None, &url("http://h"), Layout::Mirror).unwrap().as_str(),
            "h/index.html"
        );
        // Encoded separators and dot-dot never become path structure.
        let sneaky = url("http://h/a/%2e%2e/%2E%2E%2Fetc%2Fpasswd");
        let path = output_path(None, &sneaky, Layout::Mirror).unwrap();
        assert!(!path.as_str().split('/').any(|c| c == ".."), "{path:?}");
        // The URL parser already resolves `%2e%2e` as a dot-dot segment; the encoded slash stays text.
        assert_eq!(path.as_str(), "h/.._etc_passwd");
    }

    #[test]
    fn haul_state_directory_is_reserved() {
        for bad in [".haul/archive.sqlite", "a/.HAUL/x", ".Haul"] {
            let err = checked_path(bad).unwrap_err();
            assert!(err.contains("haul's own"), "{bad:?}: {err}");
        }
        assert_eq!(checked_path(".haulx/a").unwrap().as_str(), ".haulx/a");
        assert_eq!(sanitize(".haul"), "_haul");
        assert_eq!(sanitize(".HAUL"), "_HAUL");
        let url = url("http://h/.haul");
        assert_eq!(output_path(None, &url, Layout::Flat).unwrap().as_str(), "_haul");
        let mirror = Url::parse("http://h/.haul/archive.sqlite").unwrap();
        assert_eq!(
            output_path(None, &mirror, Layout::Mirror).unwrap().as_str(),
            "h/_haul/archive.sqlite"
        );
    }

    #[test]
    fn invisible_format_characters_are_mapped() {
        let url = url("http://h/photo%E2%80%AEgpj.exe");
        assert_eq!(output_path(None, &url, Layout::Flat).unwrap().as_str(), "photo_gpj.exe");
        assert_eq!(checked_path("a\u{200B}b/c\u{FEFF}").unwrap().as_str(), "a_b/c_");
    }

    #[test]
    fn case_folding_file_systems_see_one_file() {
        assert_ne!(
            RelPath::fingerprint_of("a/Photo.JPG", false),
            RelPath::fingerprint_of("a/photo.jpg", false)
        );
        assert_eq!(
            RelPath::fingerprint_of("a/Photo.JPG", true),
            RelPath::fingerprint_of("a/photo.jpg", true)
        );
    }

    #[test]
    fn long_names_shorten_deterministically() {
        let long = format!("{}.jpg", "x".repeat(400));
        let a = checked_path(&long).unwrap();
        assert!(a.as_str().len() <= MAX_COMPONENT);
        assert!(a.as_str().ends_with(".jpg"));
        assert_eq!(a, checked_path(&long).unwrap());
        let other = format!("{}y.jpg", "x".repeat(399));
        assert_ne!(a, checked_path(&other).unwrap());
        let multibyte = "é".repeat(300);
        assert!(checked_path(&multibyte).unwrap().as_str().len() <= MAX_COMPONENT);
    }
}
