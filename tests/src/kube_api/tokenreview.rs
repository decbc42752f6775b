//! `POST /apis/authentication.k8s.io/v1/tokenreviews`, answered from a
//! table of test tokens ([`TokenReviews::register`]) the way a real API
//! server answers for projected service-account tokens: the token's
//! audiences are intersected with those asked (none asked: the API
//! server's own, [`API_AUDIENCE`]); an empty intersection or an unknown
//! token is `authenticated: false` with an `error`. A pod-bound token
//! carries `authentication.kubernetes.io/pod-name` and `pod-uid` in
//! `status.user.extra`. Reviews are not stored (as in a real server).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};

/// The API server's own audience (tokens for it are not for the mesh).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// What a test token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestToken {
    pub namespace: String,
    pub service_account: String,
    pub audiences: Vec<String>,
    /// `(name, uid)` of the pod it is bound to.
    pub pod: Option<(String, String)>,
}

impl TestToken {
    /// A projected token of `namespace/service_account` for audience
    /// `istio-ca`, bound to pod `pod_name` with `pod_uid`.
    pub fn projected(
        namespace: &str,
        service_account: &str,
        pod_name: &str,
        pod_uid: &str,
    ) -> Self {
        TestToken {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            audiences: vec!["istio-ca".to_owned()],
            pod: Some((pod_name.to_owned(), pod_uid.to_owned())),
        }
    }
}

/// The tokens the test API server knows, and how many reviews it served.
#[derive(Debug, Default)]
pub struct TokenReviews {
    tokens: Mutex<HashMap<String, TestToken>>,
    served: AtomicU64,
}

impl TokenReviews {
    pub fn register(&self, token: &str, t: TestToken) {
        self.lock().insert(token.to_owned(), t);
    }

    /// The token is no longer valid (expired, or its pod deleted).
    pub fn revoke(&self, token: &str) {
        self.lock().remove(token);
    }

    /// Reviews answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TestToken>> {
        self.tokens.lock().expect("token table poisoned")
    }

    /// The answer to a `TokenReview` (the request body): the same object
    /// with `status` filled in.
    pub fn review(&self, request: &Value) -> Value {
        self.served.fetch_add(1, Ordering::Relaxed);
        let token = request["spec"]["token"].as_str().unwrap_or_default();
        let asked: Vec<String> = match request["spec"]["audiences"].as_array() {
            Some(a) if !a.is_empty() => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => vec![API_AUDIENCE.to_owned()],
        };
        let status = match self.lock().get(token) {
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
            Some(t) => {
                let both: Vec<&String> = asked.iter().filter(|a| t.audiences.contains(a)).collect();
                if both.is_empty() {
                    json!({
                        "authenticated": false,
                        "error": "invalid bearer token, token audiences are invalid for the target audiences",
                    })
                } else {
                    let mut user = json!({
                        "username": format!("system:serviceaccount:{}:{}", t.namespace, t.service_account),
                        "uid": format!("sa-uid-{}-{}", t.namespace, t.service_account),
                        "groups": [
                            "system:serviceaccounts",
                            format!("system:serviceaccounts:{}", t.namespace),
                            "system:authenticated",
                        ],
                    });
                    if let Some((name, uid)) = &t.pod {
                        user["extra"] = json!({
                            "authentication.kubernetes.io/pod-name": [name],
                            "authentication.kubernetes.io/pod-uid": [uid],
                        });
                    }
                    json!({"authenticated": true, "user": user, "audiences": both})
                }
            }
        };
        let mut out = request.clone();
        out["apiVersion"] = json!("authentication.k8s.io/v1");
        out["kind"] = json!("TokenReview");
        if !out["metadata"].is_object() {
            out["metadata"] = json!({});
        }
        out["metadata"]["creationTimestamp"] = Value::Null;
        out["status"] = status;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(token: &str, audiences: Option<&[&str]>) -> Value {
        let mut r = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}});
        if let Some(a) = audiences {
            r["spec"]["audiences"] = json!(a);
        }
        r
    }

    #[test]
    fn reviews_as_a_real_api_server() {
        let t = TokenReviews::default();
        t.register(
            "tok",
            TestToken::projected("istio-system", "ztunnel", "zt-1", "u-1"),
        );
        let ok = t.review(&req("tok", Some(&["istio-ca", "other"])));
        assert_eq!(ok["status"]["authenticated"], true);
        assert_eq!(ok["status"]["audiences"], json!(["istio-ca"]));
        assert_eq!(
            ok["status"]["user"]["username"],
            "system:serviceaccount:istio-system:ztunnel"
        );
        assert_eq!(
            ok["status"]["user"]["extra"]["authentication.kubernetes.io/pod-uid"],
            json!(["u-1"])
        );
        assert_eq!(
            t.review(&req("tok", None))["status"]["authenticated"],
            false,
            "not for the API server"
        );
        assert_eq!(
            t.review(&req("nope", Some(&["istio-ca"])))["status"]["authenticated"],
            false
        );
        t.revoke("tok");
        assert_eq!(
            t.review(&req("tok", Some(&["istio-ca"])))["status"]["authenticated"],
            false
        );
        assert_eq!(t.served(), 4);
    }
}
