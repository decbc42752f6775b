//! The bearer token a proxy presents to the control plane
//! (`authorization: Bearer <token>` on every xDS stream and CA call).
//!
//! A token is either fixed (a file-mode node token read once) or a file
//! read again on each use: a Kubernetes projected service-account token
//! (audience `istio-ca`) is rotated by the kubelet in place, and a proxy
//! that kept the first one would be refused once it expired.

use std::path::{Path, PathBuf};

/// Where the token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BearerToken {
    /// This value, always.
    Static(String),
    /// The contents of this file (trimmed), read on each use.
    File(PathBuf),
}

impl From<String> for BearerToken {
    fn from(s: String) -> Self {
        BearerToken::Static(s)
    }
}

impl From<&str> for BearerToken {
    fn from(s: &str) -> Self {
        BearerToken::Static(s.to_owned())
    }
}

impl BearerToken {
    /// A token read from `path` on each use. Reads it once now, so a
    /// missing or empty file is an error at start, not a refusal later.
    pub fn file(path: &Path) -> std::io::Result<Self> {
        read(path)?;
        Ok(BearerToken::File(path.to_owned()))
    }

    /// The token now. A file that cannot be read (mid-rotation, say) is
    /// logged, and the call goes out without a token: the control plane
    /// refuses it and the caller retries with backoff.
    pub fn value(&self) -> Option<String> {
        match self {
            BearerToken::Static(s) => Some(s.clone()),
            BearerToken::File(path) => match read(path) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "reading the bearer token");
                    None
                }
            },
        }
    }

    /// The `authorization` metadata value, if there is a token.
    pub fn header(&self) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
        format!("Bearer {}", self.value()?).parse().ok()
    }
}

fn read(path: &Path) -> std::io::Result<String> {
    let t = std::fs::read_to_string(path)?.trim().to_owned();
    if t.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_token_is_read_again_on_each_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let t = BearerToken::file(&path).unwrap();
        assert_eq!(t.value().as_deref(), Some("first"));
        // The kubelet rotates a projected token by replacing the file.
        std::fs::write(&path, "second").unwrap();
        assert_eq!(t.value().as_deref(), Some("second"));
        assert_eq!(t.header().unwrap().to_str().unwrap(), "Bearer second");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(t.value(), None);
    }

    #[test]
    fn a_missing_or_empty_file_is_an_error_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        assert!(BearerToken::file(&path).is_err());
        std::fs::write(&path, " \n").unwrap();
        assert!(BearerToken::file(&path).is_err());
        assert_eq!(
            BearerToken::from("x".to_owned()).value().as_deref(),
            Some("x")
        );
    }
}
