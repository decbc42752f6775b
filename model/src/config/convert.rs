//! From the YAML model to domain types, with semantic checks that name the
//! offending key and value.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use crate::identity::SpiffeId;

use super::model::{
    ActionDoc, File, MtlsDoc, NamespaceDoc, OperationDoc, PolicyDoc, PortDoc, RuleDoc, ServiceDoc,
    SourceDoc, TunnelDoc, WorkloadDoc,
};
use super::{ConfigError, DEFAULT_ROOT_NAMESPACE};
use crate::state::{
    ambient_enrolled, has_sidecar, selected_policies, AppProtocol, Cidr, Clause, Match, MtlsMode,
    Namespace, Node, Policy, PolicyAction, PolicyScope, Rule, Service, ServicePort, SnapshotParts,
    StringMatch, Tunnel, Workload, DEFAULT_TRUST_DOMAIN,
};

/// Service account used when a workload names none (as in Kubernetes).
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Resolves each `WORKLOAD_SELECTOR` policy's labels into the workloads it
/// selects, as the control plane does for xDS.
fn select_policies(workloads: &mut [Workload], policies: &[Policy]) {
    for w in workloads {
        w.authorization_policies = selected_policies(policies, w);
    }
}

pub(super) fn to_parts(file: File) -> Result<SnapshotParts, ConfigError> {
    let trust_domain = file
        .trust_domain
        .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_owned());
    SpiffeId::new(&trust_domain, "ns", "sa").map_err(|source| ConfigError::BadName {
        key: "trustDomain".into(),
        value: trust_domain.clone(),
        source,
    })?;
    let root_ns = file
        .root_namespace
        .unwrap_or_else(|| DEFAULT_ROOT_NAMESPACE.to_owned());
    let nodes = nodes(file.nodes)?;
    let namespaces = namespaces(file.namespaces)?;
    let mut ctx = Ctx {
        trust_domain: &trust_domain,
        nodes: nodes.iter().map(|n| n.name.clone()).collect(),
        namespaces: namespaces.iter().map(|n| (n.name.clone(), n)).collect(),
        ips: HashMap::new(),
        names: HashSet::new(),
        checked_names: HashSet::new(),
    };
    let workloads = file
        .workloads
        .into_iter()
        .enumerate()
        .map(|(i, w)| ctx.workload(i, w))
        .collect::<Result<Vec<_>, _>>()?;
    let services = file
        .services
        .into_iter()
        .enumerate()
        .map(|(i, s)| ctx.service(i, s))
        .collect::<Result<Vec<_>, _>>()?;
    // A policy is named by namespace and name, as in Kubernetes: a second
    // one of the same name would silently shadow or add to the first.
    let mut policy_names = HashSet::new();
    let known_ns: HashSet<&str> = namespaces.iter().map(|n| n.name.as_str()).collect();
    let routes = super::route::routes(file.routes, &known_ns, &services)?;
    let mut l7_policies = Vec::new();
    let policies = file
        .policies
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| {
            if !super::l7policy::is_l7(&p) {
                return Some(super::l7policy::check_l4(i, &p).map(|()| (i, p)));
            }
            if !policy_names.insert((p.namespace.clone(), p.name.clone())) {
                let value = format!("{}/{}", p.namespace, p.name);
                return Some(Err(duplicate(format!("policies[{i}].name"), &value)));
            }
            let l7 = super::l7policy::l7_policy(i, &p, &known_ns, &root_ns);
            l7.map(|l7| l7_policies.push(l7)).err().map(Err)
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(|(i, p)| {
            if !policy_names.insert((p.namespace.clone(), p.name.clone())) {
                let value = format!("{}/{}", p.namespace, p.name);
                return Err(duplicate(format!("policies[{i}].name"), &value));
            }
            ctx.policy(i, p, &root_ns)
        })
        .collect::<Result<Vec<_>, _>>()?;
    drop(ctx);
    let mut workloads = workloads;
    select_policies(&mut workloads, &policies);
    Ok(SnapshotParts {
        trust_domain,
        nodes,
        namespaces,
        workloads,
        services,
        policies,
        routes,
        l7_policies,
    })
}

fn nodes(docs: Vec<super::model::NodeDoc>) -> Result<Vec<Node>, ConfigError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(docs.len());
    for (i, n) in docs.into_iter().enumerate() {
        if !seen.insert(n.name.clone()) {
            return Err(duplicate(format!("nodes[{i}].name"), &n.name));
        }
        let ip = parse_ip(format!("nodes[{i}].ip"), &n.ip)?;
        out.push(Node { name: n.name, ip });
    }
    Ok(out)
}

fn namespaces(docs: Vec<NamespaceDoc>) -> Result<Vec<Namespace>, ConfigError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(docs.len());
    for (i, ns) in docs.into_iter().enumerate() {
        let key = format!("namespaces[{i}].name");
        check_name(&key, &ns.name)?;
        if !seen.insert(ns.name.clone()) {
            return Err(duplicate(key, &ns.name));
        }
        out.push(Namespace {
            name: ns.name,
            labels: ns.labels,
            mtls: match ns.mtls {
                MtlsDoc::Strict => MtlsMode::Strict,
                MtlsDoc::Permissive => MtlsMode::Permissive,
            },
        });
    }
    Ok(out)
}

/// A key path such as `workloads[3].ip`, formatted only for an error (a
/// parse of 10,000 workloads would otherwise format 50,000 of them).
#[derive(Debug, Clone, Copy)]
struct At {
    section: &'static str,
    index: usize,
    field: &'static str,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}].{}", self.section, self.index, self.field)
    }
}

struct Ctx<'a> {
    trust_domain: &'a str,
    nodes: BTreeSet<String>,
    namespaces: BTreeMap<String, &'a Namespace>,
    /// Every workload IP and VIP so far, with the key that claimed it.
    ips: HashMap<IpAddr, At>,
    /// Workload uids and `service/<ns>/<name>` keys seen so far.
    names: HashSet<String>,
    /// Service-account names already found valid (they repeat).
    checked_names: HashSet<String>,
}

impl Ctx<'_> {
    fn namespace(&self, key: At, value: &str) -> Result<&Namespace, ConfigError> {
        self.namespaces
            .get(value)
            .copied()
            .ok_or_else(|| ConfigError::UnknownNamespace {
                key: key.to_string(),
                value: value.to_owned(),
            })
    }

    fn claim_ip(&mut self, key: At, value: &str) -> Result<IpAddr, ConfigError> {
        let ip = parse_ip_at(key, value)?;
        if let Some(first) = self.ips.get(&ip) {
            return Err(ConfigError::DuplicateIp {
                key: key.to_string(),
                value: ip,
                first: first.to_string(),
            });
        }
        self.ips.insert(ip, key);
        Ok(ip)
    }

    fn claim_name(&mut self, key: At, value: &str) -> Result<(), ConfigError> {
        if !self.names.insert(value.to_owned()) {
            return Err(duplicate(key.to_string(), value));
        }
        Ok(())
    }

    /// [`check_name`], remembering names that passed.
    fn check_name(&mut self, key: At, value: &str) -> Result<(), ConfigError> {
        if !self.checked_names.contains(value) {
            check_name(&key.to_string(), value)?;
            self.checked_names.insert(value.to_owned());
        }
        Ok(())
    }

    fn workload(&mut self, i: usize, w: WorkloadDoc) -> Result<Workload, ConfigError> {
        let at = |field: &'static str| At {
            section: "workloads",
            index: i,
            field,
        };
        let ns = self.namespace(at("namespace"), &w.namespace)?;
        let ambient = ambient_enrolled(&ns.labels, &w.labels);
        let (uid_key, uid) = match &w.uid {
            Some(uid) => (at("uid"), uid.clone()),
            None => (at("name"), format!("{}/{}", w.namespace, w.name)),
        };
        self.claim_name(uid_key, &uid)?;
        if !self.nodes.contains(&w.node) {
            return Err(ConfigError::UnknownNode {
                key: at("node").to_string(),
                value: w.node,
            });
        }
        let service_account = w
            .service_account
            .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_owned());
        self.check_name(at("serviceAccount"), &service_account)?;
        let mut ips = vec![self.claim_ip(at("ip"), &w.ip)?];
        for extra in &w.extra_ips {
            ips.push(self.claim_ip(at("extraIps"), extra)?);
        }
        // Without `tunnel` and `nativeTunnel` this is
        // `state::default_tunnel`, as for a Kubernetes pod.
        let native_tunnel = w.native_tunnel.unwrap_or_else(|| has_sidecar(&w.labels));
        let tunnel = match w.tunnel {
            Some(TunnelDoc::Hbone) => Tunnel::Hbone,
            Some(TunnelDoc::None) => Tunnel::None,
            None if ambient || native_tunnel => Tunnel::Hbone,
            None => Tunnel::None,
        };
        Ok(Workload {
            uid,
            name: w.name,
            namespace: w.namespace,
            service_account,
            trust_domain: self.trust_domain.to_owned(),
            ips,
            node: w.node,
            tunnel,
            native_tunnel,
            labels: w.labels,
            waypoint: None,
            authorization_policies: Vec::new(),
        })
    }

    fn service(&mut self, i: usize, s: ServiceDoc) -> Result<Service, ConfigError> {
        let at = |field: &'static str| At {
            section: "services",
            index: i,
            field,
        };
        let port_key = |j: usize, field: &str| format!("services[{i}].ports[{j}].{field}");
        self.namespace(at("namespace"), &s.namespace)?;
        self.claim_name(at("name"), &format!("service/{}/{}", s.namespace, s.name))?;
        let vip = self.claim_ip(at("vip"), &s.vip)?;
        let mut ports = Vec::with_capacity(s.ports.len());
        for (j, p) in s.ports.iter().enumerate() {
            let port = port_at(|| port_key(j, "port"), &p.port)?;
            let target_port = match &p.target_port {
                Some(t) => port_at(|| port_key(j, "targetPort"), t)?,
                None => port,
            };
            if ports.iter().any(|p: &ServicePort| p.port == port) {
                return Err(duplicate(port_key(j, "port"), &port.to_string()));
            }
            ports.push(ServicePort {
                port,
                target_port,
                app_protocol: AppProtocol::declared(p.app_protocol.as_deref(), p.name.as_deref()),
            });
        }
        Ok(Service {
            hostname: Service::fqdn(&s.name, &s.namespace),
            name: s.name,
            namespace: s.namespace,
            vips: vec![vip],
            ports,
            selector: s.selector,
            endpoint_uids: Vec::new(),
            labels: s.labels,
            waypoint: None,
        })
    }

    fn policy(&self, i: usize, p: PolicyDoc, root_ns: &str) -> Result<Policy, ConfigError> {
        let at = format!("policies[{i}]");
        if p.namespace != root_ns {
            let key = At {
                section: "policies",
                index: i,
                field: "namespace",
            };
            self.namespace(key, &p.namespace)?;
        }
        let scope = match p.selector {
            Some(sel) if !sel.match_labels.is_empty() => PolicyScope::WorkloadSelector {
                match_labels: sel.match_labels,
            },
            _ if p.namespace == root_ns => PolicyScope::Global,
            _ => PolicyScope::Namespace,
        };
        let rules = p
            .rules
            .into_iter()
            .enumerate()
            .map(|(j, r)| rule(&format!("{at}.rules[{j}]"), r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            name: p.name,
            namespace: p.namespace,
            scope,
            action: match p.action {
                ActionDoc::Allow => PolicyAction::Allow,
                ActionDoc::Deny => PolicyAction::Deny,
            },
            rules,
        })
    }
}

/// Istio's conversion: `from` becomes one clause (any source), `to` another
/// (any operation); a rule needs both to match.
fn rule(at: &str, r: RuleDoc) -> Result<Rule, ConfigError> {
    let mut clauses = Vec::new();
    if !r.from.is_empty() {
        let matches = r
            .from
            .into_iter()
            .enumerate()
            .map(|(k, f)| source(&format!("{at}.from[{k}].source"), f.source))
            .collect::<Result<Vec<_>, _>>()?;
        clauses.push(Clause { matches });
    }
    if !r.to.is_empty() {
        let matches =
            r.to.into_iter()
                .enumerate()
                .map(|(k, t)| operation(&format!("{at}.to[{k}].operation"), t.operation))
                .collect::<Result<Vec<_>, _>>()?;
        clauses.push(Clause { matches });
    }
    Ok(Rule { clauses })
}

fn source(at: &str, s: SourceDoc) -> Result<Match, ConfigError> {
    let patterns = |v: Vec<String>| v.iter().map(|p| StringMatch::from_pattern(p)).collect();
    let cidrs = |field: &str, v: Vec<String>| -> Result<Vec<Cidr>, ConfigError> {
        v.into_iter()
            .enumerate()
            .map(|(k, c)| {
                c.parse().map_err(|source| ConfigError::BadCidr {
                    key: format!("{at}.{field}[{k}]"),
                    value: c,
                    source,
                })
            })
            .collect()
    };
    Ok(Match {
        source_ips: cidrs("ipBlocks", s.ip_blocks)?,
        not_source_ips: cidrs("notIpBlocks", s.not_ip_blocks)?,
        namespaces: patterns(s.namespaces),
        not_namespaces: patterns(s.not_namespaces),
        principals: patterns(s.principals),
        not_principals: patterns(s.not_principals),
        ..Match::default()
    })
}

fn operation(at: &str, o: OperationDoc) -> Result<Match, ConfigError> {
    let ports = |field: &str, v: &[PortDoc]| -> Result<Vec<u16>, ConfigError> {
        v.iter()
            .enumerate()
            .map(|(k, p)| port(format!("{at}.{field}[{k}]"), p))
            .collect()
    };
    Ok(Match {
        destination_ports: ports("ports", &o.ports)?,
        not_destination_ports: ports("notPorts", &o.not_ports)?,
        ..Match::default()
    })
}

fn port(key: String, p: &PortDoc) -> Result<u16, ConfigError> {
    port_at(|| key, p)
}

/// [`port`] with the key made only on error.
fn port_at(key: impl FnOnce() -> String, p: &PortDoc) -> Result<u16, ConfigError> {
    let n = match p {
        PortDoc::Number(n) => u16::try_from(*n).ok(),
        PortDoc::Text(s) => s.trim().parse::<u16>().ok(),
    };
    n.filter(|n| *n != 0).ok_or_else(|| ConfigError::BadPort {
        key: key(),
        value: p.to_string(),
    })
}

fn parse_ip(key: String, value: &str) -> Result<IpAddr, ConfigError> {
    value.parse().map_err(|source| ConfigError::BadIp {
        key,
        value: value.to_owned(),
        source,
    })
}

fn parse_ip_at(key: At, value: &str) -> Result<IpAddr, ConfigError> {
    value.parse().map_err(|source| ConfigError::BadIp {
        key: key.to_string(),
        value: value.to_owned(),
        source,
    })
}

/// Namespace and service-account names must fit in a SPIFFE identity.
fn check_name(key: &str, value: &str) -> Result<(), ConfigError> {
    SpiffeId::new(DEFAULT_TRUST_DOMAIN, value, value)
        .map(drop)
        .map_err(|source| ConfigError::BadName {
            key: key.to_owned(),
            value: value.to_owned(),
            source,
        })
}

fn duplicate(key: String, value: &str) -> ConfigError {
    ConfigError::Duplicate {
        key,
        value: value.to_owned(),
    }
}
