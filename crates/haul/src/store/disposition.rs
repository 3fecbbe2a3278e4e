//! `Content-Disposition` file names (RFC 6266), including RFC 8187 `filename*`.
//!
//! `filename*` wins over `filename` when both are present (RFC 6266 §4.3). Only the last path
//! component of the name is used, and it is sanitised like any other name, so a server can
//! choose a file name but never a directory.
//!
//! A server may not choose a launcher: a name whose extension runs or opens something when
//! double-clicked ([`LAUNCHER_EXTENSIONS`]: `.exe`, `.desktop`, `.lnk`, `.url`, `.sh`, …) is
//! not used, and the file keeps the name derived from its URL (or the manifest's path).

/// The file name a `Content-Disposition` value suggests, already sanitised; `None` when it gives
/// none (or only an unusable one such as `..`).
///
/// ```
/// use haul::store::disposition_filename;
/// assert_eq!(disposition_filename("attachment; filename=\"a b.jpg\"").as_deref(), Some("a b.jpg"));
/// assert_eq!(disposition_filename("attachment; filename=x.bin; filename*=UTF-8''%E2%82%AC.bin").as_deref(), Some("€.bin"));
/// assert_eq!(disposition_filename("attachment; filename=\"../../etc/passwd\"").as_deref(), Some("passwd"));
/// ```
#[must_use]
pub fn disposition_filename(value: &str) -> Option<String> {
    let mut plain = None;
    let mut extended = None;
    for (name, raw) in parameters(value) {
        match name.to_ascii_lowercase().as_str() {
            "filename" => plain = Some(raw),
            "filename*" => extended = decode_extended(&raw).or(extended),
            _ => {}
        }
    }
    let name = extended.or(plain)?;
    // A name, not a path: keep what follows the last separator.
    let last = name.rsplit(['/', '\\']).next().unwrap_or("").trim();
    if matches!(last, "" | "." | "..") {
        return None;
    }
    let clean = super::path::sanitize(last);
    (!is_launcher(&clean)).then_some(clean)
}

/// Extensions (lowercase, without the dot) of files that run code or open another target when
/// opened: Windows executables, scripts and shortcuts, desktop launchers, macOS and Linux
/// executables and installers.
pub const LAUNCHER_EXTENSIONS: &[&str] = &[
    "exe",
    "com",
    "scr",
    "pif",
    "bat",
    "cmd",
    "msi",
    "msp",
    "cpl",
    "hta",
    "jar",
    "js",
    "jse",
    "vbs",
    "vbe",
    "wsf",
    "wsh",
    "ps1",
    "psm1",
    "reg",
    "lnk",
    "url",
    "inf",
    "scf",
    "application",
    "appref-ms",
    "desktop",
    "sh",
    "bash",
    "zsh",
    "csh",
    "ksh",
    "command",
    "run",
    "appimage",
    "app",
    "pkg",
    "dmg",
    "webloc",
];

/// True when a name's extension is a launcher (trailing dots and spaces ignored, as Windows
/// does).
fn is_launcher(name: &str) -> bool {
    let name = name.trim_end_matches(['.', ' ']);
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| LAUNCHER_EXTENSIONS.iter().any(|l| l.eq_ignore_ascii_case(ext)))
}

/// `name=value` parameters after the disposition type; quoted values unescaped.
fn parameters(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = match value.split_once(';') {
        Some((_, rest)) => rest,
        None => return out,
    };
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        let Some((name, after)) = rest.split_once('=') else {
            return out;
        };
        let after = after.trim_start();
        let (val, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut text = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            text.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    other => text.push(other),
                }
            }
            (text, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        out.push((name.trim().to_owned(), val));
        rest = remaining;
    }
}

/// RFC 8187 `charset'language'percent-encoded`, for UTF-8 and ISO-8859-1.
fn decode_extended(value: &str) -> Option<String> {
    let mut parts = value.splitn(3, '\'');
    let charset = parts.next()?.to_ascii_lowercase();
    let _language = parts.next()?;
    let encoded = parts.next()?;
    let mut bytes = Vec::with_capacity(encoded.len());
    let raw = encoded.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    match charset.as_str() {
        "utf-8" => String::from_utf8(bytes).ok(),
        "iso-8859-1" => Some(bytes.into_iter().map(char::from).collect()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn launchers_are_not_used() {
        for name in [
            "setup.exe",
            "a.desktop",
            "x.LNK",
            "site.url",
            "run.sh",
            "evil.exe.",
            "y.ps1",
        ] {
            let header = format!("attachment; filename=\"{name}\"");
            assert_eq!(super::disposition_filename(&header), None, "{name}");
        }
        assert_eq!(
            super::disposition_filename("attachment; filename=\"data.bin\"").as_deref(),
            Some("data.bin")
        );
        assert_eq!(
            super::disposition_filename("attachment; filename=\"sh\"").as_deref(),
            Some("sh")
        );
    }

    use super::*;

    #[test]
    fn forms_and_precedence() {
        let cases: &[(&str, Option<&str>)] = &[
            ("attachment; filename=plain.txt", Some("plain.txt")),
            ("inline; filename=\"quoted \\\"x\\\".txt\"", Some("quoted \"x\".txt")),
            (
                "attachment; filename*=UTF-8''na%C3%AFve.txt; filename=fallback.txt",
                Some("naïve.txt"),
            ),
            ("attachment; filename*=iso-8859-1'en'%A3rates.txt", Some("£rates.txt")),
            ("attachment; filename*=bogus'x'y; filename=ok.txt", Some("ok.txt")),
            ("attachment; filename=\"C:\\\\evil\\\\win.ini\"", Some("win.ini")),
            ("attachment; filename=\"..\"", None),
            ("attachment; filename=\"a\u{7}b\"", Some("a_b")),
            ("attachment", None),
            ("attachment; size=3", None),
        ];
        for (value, want) in cases {
            assert_eq!(disposition_filename(value).as_deref(), *want, "{value}");
        }
    }
}
