//! HTTP/1.1 hardening in front of hyper: strict framing
//! ([`framing::Framer`], pure) and the stream wrapper that applies it and
//! the header read timeout ([`guard::Guarded`]).

pub mod framing;
pub mod guard;
