//! `ambient.mesh.v1.L7Authorization` ↔ [`L7Policy`].

use std::net::IpAddr;

use proto::mesh as pb;
use proto::security as pb_sec;

use super::{each, port, required, FieldError, Problem, Result};
use crate::l7policy::{
    Condition, ConditionKey, L7Policy, L7Rule, Operation, PolicyTarget, Source, ValueSet,
};
use crate::state::{Cidr, PolicyAction, StringMatch};
use crate::xds::convert::{cidr, string_match};

impl TryFrom<&pb::L7Authorization> for L7Policy {
    type Error = FieldError;

    fn try_from(a: &pb::L7Authorization) -> Result<L7Policy> {
        let name = required("name", &a.name)?;
        let namespace = required("namespace", &a.namespace)?;
        if a.target_refs.is_empty() {
            return Err(FieldError::new("target_refs", Problem::Missing));
        }
        let targets = each("target_refs", &a.target_refs, |t| {
            let name = required("name", &t.name)?;
            match pb::policy_target_ref::Kind::try_from(t.kind) {
                Ok(pb::policy_target_ref::Kind::Gateway) => Ok(PolicyTarget::Gateway(name)),
                Ok(pb::policy_target_ref::Kind::Service) => Ok(PolicyTarget::Service(name)),
                Err(_) => Err(FieldError::new("kind", Problem::UnknownEnum(t.kind))),
            }
        })?;
        let action = match pb_sec::Action::try_from(a.action) {
            Ok(pb_sec::Action::Allow) => PolicyAction::Allow,
            Ok(pb_sec::Action::Deny) => PolicyAction::Deny,
            Err(_) => return Err(FieldError::new("action", Problem::UnknownEnum(a.action))),
        };
        let rules = each("rules", &a.rules, |r| {
            Ok(L7Rule {
                from: each("from", &r.from, source)?,
                to: each("to", &r.to, operation)?,
                when: each("when", &r.when, condition)?,
            })
        })?;
        Ok(L7Policy {
            name,
            namespace,
            targets,
            action,
            rules,
        })
    }
}

fn strings(field: &str, v: &[pb_sec::StringMatch]) -> Result<Vec<StringMatch>> {
    each(field, v, |s| {
        string_match(s).map_err(|_| FieldError::new("match_type", Problem::Missing))
    })
}

fn cidrs(field: &'static str, v: &[pb_sec::Address]) -> Result<Vec<Cidr>> {
    each(field, v, |a| {
        cidr(field, a).map_err(|e| FieldError::new("", Problem::BadCidr(e.to_string())))
    })
}

fn source(s: &pb::L7Source) -> Result<Source> {
    Ok(Source {
        principals: strings("principals", &s.principals)?,
        not_principals: strings("not_principals", &s.not_principals)?,
        namespaces: strings("namespaces", &s.namespaces)?,
        not_namespaces: strings("not_namespaces", &s.not_namespaces)?,
        ip_blocks: cidrs("ip_blocks", &s.ip_blocks)?,
        not_ip_blocks: cidrs("not_ip_blocks", &s.not_ip_blocks)?,
        remote_ip_blocks: cidrs("remote_ip_blocks", &s.remote_ip_blocks)?,
        not_remote_ip_blocks: cidrs("not_remote_ip_blocks", &s.not_remote_ip_blocks)?,
    })
}

/// Hosts compare case-insensitively: held lower-case.
fn hosts(field: &str, v: &[pb_sec::StringMatch]) -> Result<Vec<StringMatch>> {
    Ok(strings(field, v)?
        .into_iter()
        .map(|m| match m {
            StringMatch::Exact(s) => StringMatch::Exact(s.to_ascii_lowercase()),
            StringMatch::Prefix(s) => StringMatch::Prefix(s.to_ascii_lowercase()),
            StringMatch::Suffix(s) => StringMatch::Suffix(s.to_ascii_lowercase()),
            StringMatch::Presence => StringMatch::Presence,
        })
        .collect())
}

/// Istio's path templates (`{*}`, `{**}`) are not supported: refused
/// rather than matched literally, which would let a DENY miss.
fn paths(field: &str, v: &[pb_sec::StringMatch]) -> Result<Vec<StringMatch>> {
    let out = strings(field, v)?;
    for (i, m) in out.iter().enumerate() {
        if m.to_pattern().contains(['{', '}']) {
            return Err(FieldError::new(
                format_args!("{field}[{i}]"),
                Problem::Unsupported("a path template ({*}, {**})"),
            ));
        }
    }
    Ok(out)
}

fn operation(o: &pb::L7Operation) -> Result<Operation> {
    let ports = |field: &'static str, v: &[u32]| each(field, v, |p| port("", *p));
    Ok(Operation {
        hosts: hosts("hosts", &o.hosts)?,
        not_hosts: hosts("not_hosts", &o.not_hosts)?,
        ports: ports("ports", &o.ports)?,
        not_ports: ports("not_ports", &o.not_ports)?,
        methods: strings("methods", &o.methods)?,
        not_methods: strings("not_methods", &o.not_methods)?,
        paths: paths("paths", &o.paths)?,
        not_paths: paths("not_paths", &o.not_paths)?,
    })
}

fn value_set<T>(
    c: &pb::L7Condition,
    parse: impl Fn(&str) -> std::result::Result<T, Problem>,
) -> Result<ValueSet<T>> {
    let list = |field: &str, v: &[String]| {
        each(field, v, |s| parse(s).map_err(|p| FieldError::new("", p)))
    };
    Ok(ValueSet {
        values: list("values", &c.values)?,
        not_values: list("not_values", &c.not_values)?,
    })
}

fn condition(c: &pb::L7Condition) -> Result<Condition> {
    let key = ConditionKey::parse(&c.key).map_err(|e| FieldError::new("key", e.into()))?;
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(FieldError::new("values", Problem::Missing));
    }
    let pattern = |s: &str| Ok(StringMatch::from_pattern(s));
    let cidr = |s: &str| {
        s.parse::<Cidr>()
            .map_err(|_| Problem::BadCidr(s.to_owned()))
    };
    let port = |s: &str| match s.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(Problem::NotOneOf {
            value: s.to_owned(),
            allowed: "a port from 1 to 65535",
        }),
    };
    Ok(match key {
        ConditionKey::RequestHeader(name) => Condition::RequestHeader(name, value_set(c, pattern)?),
        ConditionKey::SourceIp => Condition::SourceIp(value_set(c, cidr)?),
        ConditionKey::RemoteIp => Condition::RemoteIp(value_set(c, cidr)?),
        ConditionKey::DestinationIp => Condition::DestinationIp(value_set(c, cidr)?),
        ConditionKey::DestinationPort => Condition::DestinationPort(value_set(c, port)?),
        ConditionKey::SourceNamespace => Condition::SourceNamespace(value_set(c, pattern)?),
        ConditionKey::SourcePrincipal => Condition::SourcePrincipal(value_set(c, pattern)?),
    })
}

// ---- domain → proto -------------------------------------------------------

impl From<&L7Policy> for pb::L7Authorization {
    fn from(p: &L7Policy) -> pb::L7Authorization {
        use pb::policy_target_ref::Kind;
        pb::L7Authorization {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            target_refs: p
                .targets
                .iter()
                .map(|t| {
                    let (kind, name) = match t {
                        PolicyTarget::Gateway(n) => (Kind::Gateway, n),
                        PolicyTarget::Service(n) => (Kind::Service, n),
                    };
                    pb::PolicyTargetRef {
                        kind: kind as i32,
                        name: name.clone(),
                    }
                })
                .collect(),
            action: match p.action {
                PolicyAction::Allow => pb_sec::Action::Allow,
                PolicyAction::Deny => pb_sec::Action::Deny,
            } as i32,
            rules: p
                .rules
                .iter()
                .map(|r| pb::L7Rule {
                    from: r.from.iter().map(source_pb).collect(),
                    to: r.to.iter().map(operation_pb).collect(),
                    when: r.when.iter().map(condition_pb).collect(),
                })
                .collect(),
        }
    }
}

fn string_pb(s: &StringMatch) -> pb_sec::StringMatch {
    use pb_sec::string_match::MatchType;
    pb_sec::StringMatch {
        match_type: Some(match s {
            StringMatch::Exact(v) => MatchType::Exact(v.clone()),
            StringMatch::Prefix(v) => MatchType::Prefix(v.clone()),
            StringMatch::Suffix(v) => MatchType::Suffix(v.clone()),
            StringMatch::Presence => MatchType::Presence(()),
        }),
    }
}

fn strings_pb(v: &[StringMatch]) -> Vec<pb_sec::StringMatch> {
    v.iter().map(string_pb).collect()
}

fn cidrs_pb(v: &[Cidr]) -> Vec<pb_sec::Address> {
    v.iter()
        .map(|c| pb_sec::Address {
            address: match c.addr() {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            },
            length: u32::from(c.prefix_len()),
        })
        .collect()
}

fn source_pb(s: &Source) -> pb::L7Source {
    pb::L7Source {
        principals: strings_pb(&s.principals),
        not_principals: strings_pb(&s.not_principals),
        namespaces: strings_pb(&s.namespaces),
        not_namespaces: strings_pb(&s.not_namespaces),
        ip_blocks: cidrs_pb(&s.ip_blocks),
        not_ip_blocks: cidrs_pb(&s.not_ip_blocks),
        remote_ip_blocks: cidrs_pb(&s.remote_ip_blocks),
        not_remote_ip_blocks: cidrs_pb(&s.not_remote_ip_blocks),
    }
}

fn operation_pb(o: &Operation) -> pb::L7Operation {
    let ports = |v: &[u16]| v.iter().map(|p| u32::from(*p)).collect();
    pb::L7Operation {
        hosts: strings_pb(&o.hosts),
        not_hosts: strings_pb(&o.not_hosts),
        ports: ports(&o.ports),
        not_ports: ports(&o.not_ports),
        methods: strings_pb(&o.methods),
        not_methods: strings_pb(&o.not_methods),
        paths: strings_pb(&o.paths),
        not_paths: strings_pb(&o.not_paths),
    }
}

fn condition_pb(c: &Condition) -> pb::L7Condition {
    fn texts<T>(set: &ValueSet<T>, f: impl Fn(&T) -> String) -> (Vec<String>, Vec<String>) {
        (
            set.values.iter().map(&f).collect(),
            set.not_values.iter().map(&f).collect(),
        )
    }
    let (values, not_values) = match c {
        Condition::RequestHeader(_, s)
        | Condition::SourceNamespace(s)
        | Condition::SourcePrincipal(s) => texts(s, StringMatch::to_pattern),
        Condition::SourceIp(s) | Condition::RemoteIp(s) | Condition::DestinationIp(s) => {
            texts(s, Cidr::to_string)
        }
        Condition::DestinationPort(s) => texts(s, u16::to_string),
    };
    pb::L7Condition {
        key: c.key(),
        values,
        not_values,
    }
}
