//! Upstream: reaching endpoints ([`dial`]), HTTP connections pooled per
//! endpoint ([`pool`]), and the load-balancing and health state
//! ([`balancer`]) behind the pure [`crate::lb`].

pub mod balancer;
pub mod dial;
pub mod pool;
