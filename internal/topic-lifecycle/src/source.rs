//! Where the schemas of one version come from: a folder on disk (this working tree, or an old
//! copy) or a git revision, read with git itself so that no checkout is touched.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A file name ending that makes a file in the schema folder a topic's payload schema.
pub const TOPIC_SUFFIX: &str = ".event.json";
/// A file name ending that makes a file in the schema folder a header's schema.
pub const HEADER_SUFFIX: &str = ".header.json";
/// A schema file larger than this is refused rather than read: it is a mistake, not a schema.
pub const MAX_SCHEMA_BYTES: usize = 1 << 20;

/// What a schema file describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SchemaKind {
    Topic,
    Header,
}

impl SchemaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Topic => "topic",
            Self::Header => "header",
        }
    }
}

/// One schema file of one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFile {
    /// `todo-created` for `todo-created.event.json`, `x-rh-identity` for the header schema.
    pub key: String,
    pub kind: SchemaKind,
    /// The file's name, e.g. `todo-created.event.json`.
    pub name: String,
    /// The file's text, or why it could not be read as text.
    pub text: Result<String, String>,
}

/// Every schema file of one version, sorted by kind then key.
#[derive(Debug, Clone, Default)]
pub struct SchemaSet {
    /// Where the files came from, for the report: a folder or `git <rev> (<commit>)`.
    pub origin: String,
    pub files: Vec<SchemaFile>,
}

impl SchemaSet {
    pub fn find(&self, kind: SchemaKind, key: &str) -> Option<&SchemaFile> {
        self.files.iter().find(|f| f.kind == kind && f.key == key)
    }
}

/// Why a version could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError(pub String);

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceError {}

/// Splits a file name into key and kind; `None` for files that are not schemas.
pub fn classify(name: &str) -> Option<(String, SchemaKind)> {
    for (suffix, kind) in [(TOPIC_SUFFIX, SchemaKind::Topic), (HEADER_SUFFIX, SchemaKind::Header)] {
        if let Some(key) = name.strip_suffix(suffix) {
            if !key.is_empty() {
                return Some((key.to_string(), kind));
            }
        }
    }
    None
}

fn text_of(bytes: Vec<u8>) -> Result<String, String> {
    if bytes.len() > MAX_SCHEMA_BYTES {
        return Err(format!("{} bytes, more than the {MAX_SCHEMA_BYTES} a schema may have", bytes.len()));
    }
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 (first bad byte at {})", e.utf8_error().valid_up_to()))
}

fn sorted(origin: String, mut files: Vec<SchemaFile>) -> SchemaSet {
    files.sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
    SchemaSet { origin, files }
}

/// Reads the schema files in `dir` (not its subfolders).
pub fn from_dir(dir: &Path) -> Result<SchemaSet, SourceError> {
    let entries = std::fs::read_dir(dir).map_err(|e| SourceError(format!("cannot read the folder {}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SourceError(format!("cannot read the folder {}: {e}", dir.display())))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        let Some((key, kind)) = classify(&name) else { continue };
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read(&path).map_err(|e| format!("cannot be read: {e}")).and_then(text_of);
        files.push(SchemaFile { key, kind, name, text });
    }
    Ok(sorted(dir.display().to_string(), files))
}

/// Runs git in `dir`, returning its standard output or its complaint.
fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let output = Command::new("git").arg("-C").arg(dir).args(args).output().map_err(|e| format!("cannot run git: {e}"))?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// Reads the schema files that the folder `dir` (inside a git work tree) held at `revision`.
pub fn from_git(dir: &Path, revision: &str) -> Result<SchemaSet, SourceError> {
    // A revision is never an option: `--output=...` must not reach git as one.
    if revision.is_empty() || revision.starts_with('-') || revision.contains(['\0', '\n']) {
        return Err(SourceError(format!("`{}` is not a git revision", revision.escape_debug())));
    }
    let commit = git(dir, &["rev-parse", "--verify", "--quiet", &format!("{revision}^{{commit}}")])
        .map_err(|_| SourceError(format!("`{revision}` is neither a folder nor a git revision of {}", dir.display())))?;
    let commit = String::from_utf8_lossy(&commit).trim().to_string();
    let prefix = git(dir, &["rev-parse", "--show-prefix"]).map_err(SourceError)?;
    let prefix = String::from_utf8_lossy(&prefix).trim().to_string();
    let listing = git(dir, &["ls-tree", "-z", "--name-only", &commit, "--", "."]).map_err(SourceError)?;
    let mut files = Vec::new();
    for path in listing.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let path = String::from_utf8_lossy(path);
        let name = path.rsplit('/').next().unwrap_or(&path).to_string();
        let Some((key, kind)) = classify(&name) else { continue };
        let text = git(dir, &["cat-file", "blob", &format!("{commit}:{prefix}{name}")]).and_then(text_of);
        files.push(SchemaFile { key, kind, name, text });
    }
    let short = &commit[..commit.len().min(12)];
    Ok(sorted(format!("{revision} ({short})"), files))
}

/// The previous version named by `against`: a folder when one exists at that path (a folder
/// holding `api/event/` counts as that folder), otherwise a git revision of the repository that
/// holds `current_dir`.
pub fn previous(against: &str, current_dir: &Path) -> Result<SchemaSet, SourceError> {
    let path = PathBuf::from(against);
    if path.is_dir() {
        let nested = path.join("api").join("event");
        return from_dir(if nested.is_dir() { &nested } else { &path });
    }
    from_git(current_dir, against)
}
