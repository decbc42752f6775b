//! The watched kinds, a watched object as converted ([`Info`]) and what
//! names it ([`Name`]).

use mesh_model::route::{RouteKey, RouteKind};

use super::super::convert::policy::{Converted, PeerAuthInfo};
use super::super::convert::waypoint::{GatewayInfo, RouteInfo};
use super::super::convert::{NamespaceInfo, ObjectName, PodInfo, ServiceInfo, SliceInfo};

/// The watched kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    AuthorizationPolicy,
    PeerAuthentication,
    Gateway,
    HttpRoute,
    GrpcRoute,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
        }
    }
}

/// One watched object, converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    Namespace(NamespaceInfo),
    Pod(PodInfo),
    Service(ServiceInfo),
    EndpointSlice(SliceInfo),
    AuthorizationPolicy(ObjectName, Converted),
    PeerAuthentication(PeerAuthInfo),
    Gateway(GatewayInfo),
    Route(RouteInfo),
}

/// What names a watched object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Name {
    Namespace(String),
    Pod(ObjectName),
    Service(ObjectName),
    EndpointSlice(ObjectName),
    AuthorizationPolicy(ObjectName),
    PeerAuthentication(ObjectName),
    Gateway(ObjectName),
    Route(RouteKey),
}

impl Info {
    pub fn name(&self) -> Name {
        let on = |ns: &str, n: &str| (ns.to_owned(), n.to_owned());
        match self {
            Info::Namespace(i) => Name::Namespace(i.name.clone()),
            Info::Pod(i) => Name::Pod(on(&i.namespace, &i.name)),
            Info::Service(i) => Name::Service(on(&i.namespace, &i.name)),
            Info::EndpointSlice(i) => Name::EndpointSlice(on(&i.namespace, &i.name)),
            Info::AuthorizationPolicy(n, _) => Name::AuthorizationPolicy(n.clone()),
            Info::PeerAuthentication(i) => Name::PeerAuthentication(on(&i.namespace, &i.name)),
            Info::Gateway(i) => Name::Gateway(on(&i.namespace, &i.name)),
            Info::Route(i) => Name::Route(i.key.clone()),
        }
    }
}

impl Name {
    pub fn kind(&self) -> Kind {
        match self {
            Name::Namespace(_) => Kind::Namespace,
            Name::Pod(_) => Kind::Pod,
            Name::Service(_) => Kind::Service,
            Name::EndpointSlice(_) => Kind::EndpointSlice,
            Name::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Name::PeerAuthentication(_) => Kind::PeerAuthentication,
            Name::Gateway(_) => Kind::Gateway,
            Name::Route(k) => match k.kind {
                RouteKind::Http => Kind::HttpRoute,
                RouteKind::Grpc => Kind::GrpcRoute,
            },
        }
    }
}
