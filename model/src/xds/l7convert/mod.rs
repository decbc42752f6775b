//! The waypoint's xDS resources (`ambient.mesh.v1.Route` and
//! `ambient.mesh.v1.L7Authorization`) ↔ domain types.
//!
//! - proto → domain (`TryFrom`): every field is checked and the API's
//!   defaults are filled in; an error names the field by its path in the
//!   message (`rules[1].filters[0].url_rewrite.path`), so a NACK says what
//!   to fix. Regular expressions are compiled here, once.
//! - domain → proto (`From`, for the control plane): the inverse, so that
//!   domain → proto → domain is the identity (property-tested).
//!
//! The local config file builds these same messages from its YAML and
//! converts them with the same code, so both sources accept exactly the
//! same routes and policies.

mod authz;
mod route;
mod route_out;
mod route_policies;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use crate::l7policy::ConditionKeyError;
use crate::route::PatternError;

pub use route::route_key;

/// A field's path in a message, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// Dotted path with indexes, e.g. `rules[0].matches[1].path.value`.
    pub field: String,
    pub problem: Problem,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("is required")]
    Missing,
    #[error("unknown enum value {0}")]
    UnknownEnum(i32),
    #[error("{value} is out of range {min}..={max}")]
    OutOfRange { value: i64, min: i64, max: i64 },
    #[error("{0:?} is not an absolute path")]
    BadPath(String),
    #[error(transparent)]
    BadRegex(#[from] PatternError),
    #[error("{0:?} is not a valid header name")]
    BadHeaderName(String),
    #[error("{0:?} is not a valid header value")]
    BadHeaderValue(String),
    #[error("{0:?} is not an HTTP method")]
    BadMethod(String),
    #[error("{0:?} is not a valid hostname")]
    BadHostname(String),
    #[error("header {0:?} appears in more than one action")]
    DuplicateHeader(String),
    #[error("{0:?} is not a valid address or CIDR")]
    BadCidr(String),
    #[error(transparent)]
    BadConditionKey(#[from] ConditionKeyError),
    #[error("a negative or out-of-range duration")]
    BadDuration,
    #[error("{value:?} is not one of {allowed}")]
    NotOneOf {
        value: String,
        allowed: &'static str,
    },
    #[error("{0}")]
    Conflict(&'static str),
    #[error("{0} is not supported")]
    Unsupported(&'static str),
}

impl Problem {
    /// The offending value, when the problem names one (to find it in a
    /// config file).
    pub fn value(&self) -> Option<String> {
        match self {
            Problem::BadPath(v)
            | Problem::BadHeaderName(v)
            | Problem::BadHeaderValue(v)
            | Problem::BadMethod(v)
            | Problem::BadHostname(v)
            | Problem::DuplicateHeader(v)
            | Problem::BadCidr(v)
            | Problem::NotOneOf { value: v, .. } => Some(v.clone()),
            Problem::OutOfRange { value, .. } => Some(value.to_string()),
            Problem::BadRegex(e) => Some(e.source_text.clone()),
            Problem::BadConditionKey(
                ConditionKeyError::Unsupported(k) | ConditionKeyError::BadHeader(k),
            ) => Some(k.clone()),
            _ => None,
        }
    }
}

impl FieldError {
    pub(super) fn new(field: impl fmt::Display, problem: Problem) -> FieldError {
        FieldError {
            field: field.to_string(),
            problem,
        }
    }

    /// This error, for a field inside `parent`.
    pub(super) fn under(mut self, parent: impl fmt::Display) -> FieldError {
        self.field = if self.field.is_empty() {
            parent.to_string()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }

    /// A low-cardinality reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self.problem {
            Problem::Missing => "missing_field",
            Problem::UnknownEnum(_) => "unknown_enum",
            Problem::Unsupported(_) => "unsupported",
            _ => "bad_value",
        }
    }
}

type Result<T> = std::result::Result<T, FieldError>;

/// `f(item)` for each item, errors placed under `name[i]`.
fn each<T, U>(name: &str, items: &[T], f: impl Fn(&T) -> Result<U>) -> Result<Vec<U>> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| f(item).map_err(|e| e.under(format_args!("{name}[{i}]"))))
        .collect()
}

fn required(field: &'static str, v: &str) -> Result<String> {
    if v.is_empty() {
        Err(FieldError::new(field, Problem::Missing))
    } else {
        Ok(v.to_owned())
    }
}

/// A port 1..=65535.
fn port(field: &'static str, v: u32) -> Result<u16> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| FieldError::new(field, range(i64::from(v), 1, 65535)))
}

fn range(value: i64, min: i64, max: i64) -> Problem {
    Problem::OutOfRange { value, min, max }
}

fn duration(field: &'static str, d: &prost_types::Duration) -> Result<Duration> {
    Duration::try_from(*d).map_err(|_| FieldError::new(field, Problem::BadDuration))
}

fn duration_pb(d: Duration) -> prost_types::Duration {
    // Durations from config fit (GEP-2257 caps them far below i64 seconds).
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}
