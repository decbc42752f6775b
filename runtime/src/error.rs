//! One way to print an error with its causes.

use std::fmt;

/// Displays `err: cause: cause ...` on one line (logs, access logs, gRPC
/// statuses, a binary's last words).
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(c) = cur {
            write!(f, ": {c}")?;
            cur = c.source();
        }
        Ok(())
    }
}

/// [`Chain`] as a `String`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    Chain(err).to_string()
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_in_order() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(super::error_chain(&e), "outer: inner");
        let plain = std::io::Error::other("alone");
        assert_eq!(super::error_chain(&plain), "alone");
    }
}
