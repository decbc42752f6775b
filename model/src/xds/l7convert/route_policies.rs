//! A rule's timeouts, retry and fault injection: `ambient.mesh.v1` →
//! domain (the rest of the rule is in `route.rs`).

use proto::mesh as pb;

use super::{duration, each, range, FieldError, Problem, Result};
use crate::route::{
    grpc_status_code, AbortStatus, Fault, FaultAbort, FaultDelay, Fraction, Retry, Timeouts,
};

/// Istio's fault percentages are held per million (resolution 0.0001%).
const FAULT_DENOMINATOR: u32 = 1_000_000;

fn err<T>(field: &'static str, problem: Problem) -> Result<T> {
    Err(FieldError::new(field, problem))
}

pub(super) fn timeouts(t: &pb::Timeouts) -> Result<Timeouts> {
    let out = Timeouts {
        request: t
            .request
            .as_ref()
            .map(|d| duration("timeouts.request", d))
            .transpose()?,
        backend_request: t
            .backend_request
            .as_ref()
            .map(|d| duration("timeouts.backend_request", d))
            .transpose()?,
    };
    if let (Some(req), Some(be)) = (out.request(), out.backend_request()) {
        if be > req {
            return err(
                "timeouts.backend_request",
                Problem::Conflict("longer than the request timeout"),
            );
        }
    }
    Ok(out)
}

pub(super) fn retry(r: &pb::Retry) -> Result<Retry> {
    let codes = each("codes", &r.codes, |c| match u16::try_from(*c) {
        Ok(c @ 400..=599) => Ok(c),
        _ => err("", range((*c).into(), 400, 599)),
    })?;
    Ok(Retry {
        attempts: r.attempts,
        codes,
        backoff: r
            .backoff
            .as_ref()
            .map(|d| duration("backoff", d))
            .transpose()?,
    })
}

fn percentage(field: &'static str, p: f64) -> Result<Fraction> {
    if !(0.0..=100.0).contains(&p) {
        return err(
            field,
            Problem::Conflict("a percentage must be from 0 to 100"),
        );
    }
    Ok(Fraction {
        numerator: (p * 10_000.0).round() as u32,
        denominator: FAULT_DENOMINATOR,
    })
}

pub(super) fn fault(f: &pb::FaultInjection) -> Result<Fault> {
    use pb::fault_injection::abort::ErrorType;
    if f.delay.is_none() && f.abort.is_none() {
        return err("", Problem::Conflict("one of delay and abort is required"));
    }
    let delay = f
        .delay
        .as_ref()
        .map(|d| {
            Ok(FaultDelay {
                delay: duration(
                    "delay.fixed_delay",
                    d.fixed_delay
                        .as_ref()
                        .ok_or_else(|| FieldError::new("delay.fixed_delay", Problem::Missing))?,
                )?,
                fraction: percentage("delay.percentage", d.percentage)?,
            })
        })
        .transpose()?;
    let abort = f
        .abort
        .as_ref()
        .map(|a| {
            let status = match &a.error_type {
                None => return err("abort.error_type", Problem::Missing),
                Some(ErrorType::HttpStatus(s @ 200..=599)) => AbortStatus::Http(*s as u16),
                Some(ErrorType::HttpStatus(s)) => {
                    return err("abort.http_status", range((*s).into(), 200, 599))
                }
                Some(ErrorType::GrpcStatus(name)) => match grpc_status_code(name) {
                    Some(c) => AbortStatus::Grpc(c),
                    None => {
                        return err(
                            "abort.grpc_status",
                            Problem::NotOneOf {
                                value: name.clone(),
                                allowed: "a gRPC status name other than OK",
                            },
                        )
                    }
                },
            };
            Ok(FaultAbort {
                status,
                fraction: percentage("abort.percentage", a.percentage)?,
            })
        })
        .transpose()?;
    Ok(Fault { delay, abort })
}
