//! The objects a waypoint Gateway makes, and its status.

use serde_json::json;

use super::objects::*;
use crate::source::kube::gateway::Gateway;

fn gateway() -> Gateway {
    serde_yaml_ng::from_str(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop, uid: 3d1c-77, generation: 3}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"#,
    )
    .unwrap()
}

#[test]
fn a_waypoint_gateway_owns_a_deployment_a_service_and_a_service_account() {
    let o = Owner::of(&gateway()).unwrap();
    let owner_ref = json!([{
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "waypoint",
        "uid": "3d1c-77", "controller": true, "blockOwnerDeletion": true,
    }]);
    let d = deployment(&o, &Settings::default());
    let svc = service(&o);
    let sa = service_account(&o);
    for obj in [&d, &svc, &sa] {
        assert_eq!(obj["metadata"]["ownerReferences"], owner_ref, "{obj}");
        assert_eq!(obj["metadata"]["namespace"], "shop");
        assert_eq!(obj["metadata"]["name"], "waypoint");
        assert_eq!(
            obj["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
            "waypoint"
        );
    }
    assert_eq!(sa["kind"], "ServiceAccount");
    // The Service: HBONE to the waypoint's pods, never bound to a waypoint.
    assert_eq!(svc["spec"]["ports"][0]["port"], 15008);
    assert_eq!(
        svc["spec"]["selector"],
        json!({"gateway.networking.k8s.io/gateway-name": "waypoint"})
    );
    assert_eq!(svc["metadata"]["labels"]["istio.io/use-waypoint"], "none");
    // The pods: out of capture, under the waypoint's own service account,
    // selected by the Deployment and the Service alike.
    let pod = &d["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["istio.io/dataplane-mode"], "none");
    assert_eq!(
        d["spec"]["selector"]["matchLabels"],
        svc["spec"]["selector"]
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "waypoint");
    let c = &pod["spec"]["containers"][0];
    let env = |name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(env("WAYPOINT_NAME"), Some(json!("waypoint")));
    assert_eq!(env("WAYPOINT_NAMESPACE"), Some(json!("shop")));
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "istio-ca"
    );
    assert!(d["spec"].get("replicas").is_none(), "left to the user");
    assert!(pod["spec"].get("imagePullSecrets").is_none());
    let with_secrets = Settings {
        image_pull_secrets: vec!["regcred".into()],
        ..Settings::default()
    };
    assert_eq!(
        deployment(&o, &with_secrets)["spec"]["template"]["spec"]["imagePullSecrets"],
        json!([{"name": "regcred"}])
    );
}

#[test]
fn status_is_written_only_when_it_changes() {
    let gw = gateway();
    let ok = conditions(&Ok(()));
    let first = status_patch(&gw, None, &ok, Some("10.96.0.7"), "2026-01-01T00:00:00Z")
        .expect("a new Gateway gets its status");
    let status = &first["status"];
    assert_eq!(status["conditions"][0]["type"], "Accepted");
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(status["conditions"][1]["type"], "Programmed");
    assert_eq!(status["conditions"][1]["status"], "True");
    assert_eq!(status["conditions"][1]["observedGeneration"], 3);
    assert_eq!(
        status["addresses"],
        json!([{"type": "IPAddress", "value": "10.96.0.7"}])
    );
    // The same again: no write.
    assert_eq!(
        status_patch(
            &gw,
            Some(status),
            &ok,
            Some("10.96.0.7"),
            "2026-01-02T00:00:00Z"
        ),
        None
    );
    // A failure flips Programmed (a new transition time), Accepted keeps its own.
    let failed = conditions(&Err("applying the waypoint's Deployment: forbidden".into()));
    let second = status_patch(&gw, Some(status), &failed, None, "2026-01-03T00:00:00Z").unwrap();
    let c = &second["status"]["conditions"];
    assert_eq!(c[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
    assert_eq!(c[1]["status"], "False");
    assert_eq!(c[1]["reason"], "Invalid");
    assert_eq!(c[1]["lastTransitionTime"], "2026-01-03T00:00:00Z");
    // A new generation is observed again.
    let mut newer = gw.clone();
    newer.metadata.generation = Some(4);
    assert!(status_patch(&newer, Some(status), &ok, Some("10.96.0.7"), "t").is_some());
}
