//! The CA in a cluster: its material in the `cacerts` Secret (Istio's
//! plug-in CA layout, [`super::keys`]) in the root namespace, and its trust
//! bundle in a ConfigMap `istio-ca-root-cert` in every namespace.
//!
//! - [`load_or_create`]: every replica reads the Secret; when there is
//!   none, it generates a root and creates the Secret. Two replicas that
//!   start together both try; the API server takes one create and answers
//!   the other `409 AlreadyExists`, and the loser loads the winner's. So
//!   every replica signs from one root, and a restart keeps it.
//! - [`follow`]: the Secret is watched; a change (a user's rotation step,
//!   [`super::keys::CaMaterial::with_root`]) replaces the signer at once. A
//!   Secret that does not make a valid CA is refused (logged, counted) and
//!   the last good signer kept.
//! - [`publish_roots`]: while this replica leads ([`crate::leader`]), the
//!   bundle is written (server-side apply) to `istio-ca-root-cert`, key
//!   `root-cert.pem`, in each namespace but Kubernetes' own
//!   ([`SYSTEM_NAMESPACES`], skipped as Istio skips them), and again
//!   whenever the bundle or the namespaces change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::keys::{CaMaterial, KeysError, Signer, CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};

/// Istio's plug-in CA Secret.
pub const CA_SECRET: &str = "cacerts";
/// The trust bundle's ConfigMap in each namespace, and its key (Istio's).
pub const ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
pub const ROOT_CONFIGMAP_KEY: &str = "root-cert.pem";
/// Namespaces that get no root ConfigMap (Istio's ignored namespaces).
pub const SYSTEM_NAMESPACES: &[&str] = &[
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];
/// The field manager of what this control plane writes.
pub const FIELD_MANAGER: &str = "ambient-mesh-control-plane";
/// Attempts of get-or-create before giving up (each conflict is one).
const CREATE_ATTEMPTS: usize = 5;
/// A failed ConfigMap write is retried after this.
const RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading Secret {namespace}/{CA_SECRET}")]
    Get {
        namespace: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("creating Secret {namespace}/{CA_SECRET}")]
    Create {
        namespace: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("Secret {namespace}/{CA_SECRET} lacks {key}")]
    Missing {
        namespace: String,
        key: &'static str,
    },
    #[error("Secret {namespace}/{CA_SECRET} is not a valid CA")]
    Invalid {
        namespace: String,
        #[source]
        source: KeysError,
    },
    #[error("generating a root")]
    Generate(#[source] KeysError),
    #[error("Secret {namespace}/{CA_SECRET} kept changing while it was created")]
    Contended { namespace: String },
}

/// Pure: the material a Secret holds (`data`, else `stringData`).
/// `cert-chain.pem` may be missing; the others may not.
pub fn material(secret: &Secret) -> Result<CaMaterial, &'static str> {
    let get = |key: &'static str| -> Option<String> {
        let from_data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok());
        from_data.or_else(|| secret.string_data.as_ref()?.get(key).cloned())
    };
    Ok(CaMaterial {
        ca_cert: get(CA_CERT).ok_or(CA_CERT)?,
        ca_key: get(CA_KEY).ok_or(CA_KEY)?,
        cert_chain: get(CERT_CHAIN).unwrap_or_default(),
        root_cert: get(ROOT_CERT).ok_or(ROOT_CERT)?,
    })
}

/// Pure: the Secret holding `m`.
pub fn secret(namespace: &str, m: &CaMaterial) -> Secret {
    let data = [
        (CA_CERT, &m.ca_cert),
        (CA_KEY, &m.ca_key),
        (CERT_CHAIN, &m.cert_chain),
        (ROOT_CERT, &m.root_cert),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                FIELD_MANAGER.to_owned(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Default::default()
    }
}

fn checked(namespace: &str, s: &Secret) -> Result<(CaMaterial, Signer), SecretError> {
    let m = material(s).map_err(|key| SecretError::Missing {
        namespace: namespace.to_owned(),
        key,
    })?;
    let signer = Signer::new(&m).map_err(|source| SecretError::Invalid {
        namespace: namespace.to_owned(),
        source,
    })?;
    Ok((m, signer))
}

/// The CA of the cluster: the Secret's, or a new root created into it
/// (the first replica's create wins; the others load it).
pub async fn load_or_create(client: &kube::Client, namespace: &str) -> Result<Signer, SecretError> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    for _ in 0..CREATE_ATTEMPTS {
        let found = api
            .get_opt(CA_SECRET)
            .await
            .map_err(|source| SecretError::Get {
                namespace: namespace.to_owned(),
                source: Box::new(source),
            })?;
        if let Some(s) = found {
            let (_, signer) = checked(namespace, &s)?;
            tracing::info!(namespace, secret = CA_SECRET, "CA loaded from the Secret");
            return Ok(signer);
        }
        let m = CaMaterial::generate().map_err(SecretError::Generate)?;
        match api
            .create(&PostParams::default(), &secret(namespace, &m))
            .await
        {
            Ok(_) => {
                tracing::info!(
                    namespace,
                    secret = CA_SECRET,
                    "generated a root into the Secret"
                );
                return Signer::new(&m).map_err(SecretError::Generate);
            }
            // Another replica created it first: load theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(source) => {
                return Err(SecretError::Create {
                    namespace: namespace.to_owned(),
                    source: Box::new(source),
                })
            }
        }
    }
    Err(SecretError::Contended {
        namespace: namespace.to_owned(),
    })
}

/// Follows the Secret: each valid change replaces the signer in `tx`; an
/// invalid one is counted in `rejected` and the last good one kept.
pub fn follow(
    client: kube::Client,
    namespace: String,
    tx: watch::Sender<Arc<Signer>>,
    rejected: Counter,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let api = Api::<Secret>::namespaced(client, &namespace);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={CA_SECRET}"));
        let mut events = std::pin::pin!(kube::runtime::WatchStreamExt::default_backoff(watcher(
            api, cfg
        )));
        while let Some(ev) = events.next().await {
            let s = match ev {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => s,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %mesh_runtime::Chain(&e), "watching the CA Secret");
                    continue;
                }
            };
            match checked(&namespace, &s) {
                Ok((m, signer)) => {
                    if tx.borrow().material() != &m {
                        tracing::info!(
                            roots = signer.roots().len(),
                            "CA Secret changed; signing with it"
                        );
                        tx.send_replace(Arc::new(signer));
                    }
                }
                Err(e) => {
                    rejected.inc();
                    tracing::error!(error = %mesh_runtime::Chain(&e), "CA Secret refused; keeping the last good CA");
                }
            }
        }
    })
}

/// Pure: the ConfigMap carrying `bundle` in `namespace` (an apply patch).
pub fn root_configmap(namespace: &str, bundle: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CONFIGMAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            ROOT_CONFIGMAP_KEY.to_owned(),
            bundle.to_owned(),
        )])),
        ..Default::default()
    }
}

/// Pure: the namespaces whose ConfigMap must be (re)written: every one
/// not already written with `bundle`.
pub fn stale<'a>(
    namespaces: &'a BTreeSet<String>,
    written: &BTreeMap<String, String>,
    bundle: &str,
) -> Vec<&'a str> {
    namespaces
        .iter()
        .filter(|ns| !SYSTEM_NAMESPACES.contains(&ns.as_str()))
        .filter(|ns| written.get(*ns).map(String::as_str) != Some(bundle))
        .map(String::as_str)
        .collect()
}

/// Writes the trust bundle of `signer` into each namespace while `leader`
/// is true (see the module docs). Runs until the task is aborted.
pub fn publish_roots(
    client: kube::Client,
    mut signer: watch::Receiver<Arc<Signer>>,
    mut leader: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let ns_api = Api::<Namespace>::all(client.clone());
        let mut ns_events = std::pin::pin!(kube::runtime::WatchStreamExt::default_backoff(
            watcher(ns_api, watcher::Config::default())
        ));
        let mut namespaces = BTreeSet::new();
        let mut listing = BTreeSet::new();
        let mut written: BTreeMap<String, String> = BTreeMap::new();
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let bundle = signer.borrow().roots_pem();
            if *leader.borrow() {
                let mut failed = false;
                for ns in stale(&namespaces, &written, &bundle) {
                    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
                    let params = PatchParams::apply(FIELD_MANAGER).force();
                    match api
                        .patch(
                            ROOT_CONFIGMAP,
                            &params,
                            &Patch::Apply(root_configmap(ns, &bundle)),
                        )
                        .await
                    {
                        Ok(_) => {
                            written.insert(ns.to_owned(), bundle.clone());
                        }
                        Err(e) => {
                            failed = true;
                            tracing::warn!(namespace = ns, error = %mesh_runtime::Chain(&e), "writing the root ConfigMap");
                        }
                    }
                }
                retry_at = failed.then(|| tokio::time::Instant::now() + RETRY);
            } else {
                // A new leader may have written since: write all again
                // when leading again.
                written.clear();
            }
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = ns_events.next() => match ev {
                    Some(Ok(watcher::Event::Apply(n))) => {
                        namespaces.insert(n.metadata.name.unwrap_or_default());
                    }
                    Some(Ok(watcher::Event::Delete(n))) => {
                        let name = n.metadata.name.unwrap_or_default();
                        namespaces.remove(&name);
                        written.remove(&name);
                    }
                    Some(Ok(watcher::Event::Init)) => listing.clear(),
                    Some(Ok(watcher::Event::InitApply(n))) => {
                        listing.insert(n.metadata.name.unwrap_or_default());
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        namespaces = std::mem::take(&mut listing);
                        written.retain(|ns, _| namespaces.contains(ns));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %mesh_runtime::Chain(&e), "watching namespaces for the root ConfigMaps");
                    }
                    None => return,
                },
                r = signer.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                () = retry => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_round_trips_and_missing_keys_are_named() {
        let m = CaMaterial::generate().unwrap();
        let s = secret("istio-system", &m);
        assert_eq!(material(&s), Ok(m.clone()));
        // The same through JSON, as the API server stores it (base64).
        let json = serde_json::to_value(&s).unwrap();
        assert!(json["data"][CA_KEY].is_string());
        let back: Secret = serde_json::from_value(json).unwrap();
        assert_eq!(material(&back), Ok(m.clone()));
        let mut partial = s.clone();
        partial.data.as_mut().unwrap().remove(CA_KEY);
        assert_eq!(material(&partial), Err(CA_KEY));
        partial.data.as_mut().unwrap().remove(CERT_CHAIN);
        partial.string_data = Some(BTreeMap::from([(CA_KEY.into(), m.ca_key.clone())]));
        assert_eq!(
            material(&partial).map(|x| x.cert_chain),
            Ok(String::new()),
            "cert-chain.pem may be missing; stringData is read too"
        );
    }

    #[test]
    fn stale_namespaces_are_those_without_this_bundle() {
        let ns: BTreeSet<String> = ["a", "b", "c", "kube-system", "kube-public"]
            .map(String::from)
            .into();
        let written = BTreeMap::from([
            ("a".to_owned(), "B1".to_owned()),
            ("b".to_owned(), "B0".to_owned()),
        ]);
        assert_eq!(stale(&ns, &written, "B1"), ["b", "c"]);
        assert_eq!(stale(&ns, &written, "B2"), ["a", "b", "c"]);
        assert!(stale(&BTreeSet::new(), &written, "B1").is_empty());
    }

    #[test]
    fn the_configmap_carries_the_bundle_under_istios_key() {
        let cm = serde_json::to_value(root_configmap("shop", "PEM")).unwrap();
        assert_eq!(cm["metadata"]["name"], ROOT_CONFIGMAP);
        assert_eq!(cm["metadata"]["namespace"], "shop");
        assert_eq!(cm["data"]["root-cert.pem"], "PEM");
    }
}
