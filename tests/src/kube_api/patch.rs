//! The PATCH types: JSON merge patch (RFC 7386), JSON patch (RFC 6902),
//! and Kubernetes's strategic merge patch for the lists this server's
//! objects carry.
//!
//! Strategic merge patch is the built-in types' own: lists merge by a key
//! field (containers by `name`, container ports by `containerPort`,
//! Service ports by `port`, conditions by `type`, ...); other lists are
//! replaced. The directives `$patch: replace|delete`, `$retainKeys`,
//! `$deleteFromPrimitiveList/<field>` are honoured and
//! `$setElementOrder/<field>` is ignored (order is not checked). That is
//! what kubectl's `apply`, `label`, `annotate`, `patch` and `edit` send
//! for the types here; a real API server derives the keys from the Go
//! types of every kind, this one from a table.

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("patch is not valid JSON: {0}")]
    Json(String),
    #[error("JSON patch operation {index}: {reason}")]
    Operation { index: usize, reason: String },
}

/// RFC 7386: objects merge, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The key a list of `field` merges by, from what its entries carry.
fn merge_key(field: &str, entries: &[Value]) -> Option<&'static str> {
    let has = |k: &str| entries.iter().any(|e| e.get(k).is_some());
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "volumeMounts"
        | "imagePullSecrets"
        | "volumeDevices" => Some("name"),
        "ports" if has("containerPort") => Some("containerPort"),
        "ports" if has("port") => Some("port"),
        "conditions" => Some("type"),
        "podIPs" | "hostIPs" => Some("ip"),
        "ownerReferences" => Some("uid"),
        _ => None,
    }
}

/// Kubernetes's strategic merge patch (see the module docs).
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut rest = p.clone();
            rest.remove("$patch");
            *target = Value::Object(rest);
            return;
        }
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(gone)) = (t.get_mut(field), v) {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), v) {
            (Some(Value::Array(list)), Value::Array(entries)) => match merge_key(k, entries) {
                Some(key) => merge_list(list, entries, key),
                None => *list = entries.clone(),
            },
            (Some(existing), _) => strategic_merge_patch(existing, v),
            (None, _) => {
                let mut fresh = Value::Null;
                strategic_merge_patch(&mut fresh, v);
                if !fresh.is_null() {
                    t.insert(k.clone(), strip_directives(fresh));
                }
            }
        }
    }
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        t.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
}

/// Entries merge into the one with the same `key` value, or are appended.
fn merge_list(list: &mut Vec<Value>, entries: &[Value], key: &str) {
    for e in entries {
        let id = e.get(key);
        let at = id.and_then(|id| list.iter().position(|x| x.get(key) == Some(id)));
        let delete = e.get("$patch").and_then(Value::as_str) == Some("delete");
        match (at, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (Some(i), false) => strategic_merge_patch(&mut list[i], e),
            (None, true) => {}
            (None, false) => list.push(strip_directives(e.clone())),
        }
    }
}

fn strip_directives(mut v: Value) -> Value {
    match &mut v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            for x in m.values_mut() {
                *x = strip_directives(x.take());
            }
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                *x = strip_directives(x.take());
            }
        }
        _ => {}
    }
    v
}

/// A JSON pointer's unescaped segments.
fn pointer(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("path {path:?} does not start with /"))?;
    Ok(rest
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent<'a>(doc: &'a mut Value, segs: &[String]) -> Result<&'a mut Value, String> {
    let mut v = doc;
    for s in segs {
        v = match v {
            Value::Object(m) => m.get_mut(s).ok_or_else(|| format!("no {s:?}"))?,
            Value::Array(a) => {
                let i: usize = s.parse().map_err(|_| format!("bad index {s:?}"))?;
                a.get_mut(i).ok_or_else(|| format!("no index {i}"))?
            }
            _ => return Err(format!("{s:?} is inside a scalar")),
        };
    }
    Ok(v)
}

fn add(doc: &mut Value, segs: &[String], value: Value) -> Result<(), String> {
    let Some((last, up)) = segs.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, up)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse().map_err(|_| format!("bad index {last:?}"))?
            };
            if i > a.len() {
                return Err(format!("index {i} past the end"));
            }
            a.insert(i, value);
        }
        _ => return Err("parent is a scalar".into()),
    }
    Ok(())
}

fn remove(doc: &mut Value, segs: &[String]) -> Result<Value, String> {
    let (last, up) = segs.split_last().ok_or("cannot remove the root")?;
    match parent(doc, up)? {
        Value::Object(m) => m.remove(last).ok_or_else(|| format!("no {last:?}")),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("bad index {last:?}"))?;
            (i < a.len())
                .then(|| a.remove(i))
                .ok_or_else(|| format!("no index {i}"))
        }
        _ => Err("parent is a scalar".into()),
    }
}

/// RFC 6902, all or nothing.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| PatchError::Json("a JSON patch is an array".into()))?;
    let mut doc = target.clone();
    for (index, op) in ops.iter().enumerate() {
        let fail = |reason: String| PatchError::Operation { index, reason };
        let path = pointer(op["path"].as_str().unwrap_or_default()).map_err(fail)?;
        let from = || pointer(op["from"].as_str().unwrap_or_default());
        let value = || op.get("value").cloned().ok_or("no value".to_owned());
        let r = match op["op"].as_str().unwrap_or_default() {
            "add" => value().and_then(|v| add(&mut doc, &path, v)),
            "remove" => remove(&mut doc, &path).map(drop),
            "replace" => value().and_then(|v| {
                remove(&mut doc, &path)?;
                add(&mut doc, &path, v)
            }),
            "move" => from()
                .and_then(|f| remove(&mut doc, &f))
                .and_then(|v| add(&mut doc, &path, v)),
            "copy" => from()
                .and_then(|f| parent(&mut doc, &f).map(|v| v.clone()))
                .and_then(|v| add(&mut doc, &path, v)),
            "test" => value().and_then(|v| {
                (parent(&mut doc, &path)? == &v)
                    .then_some(())
                    .ok_or("test failed".to_owned())
            }),
            other => Err(format!("unknown op {other:?}")),
        };
        r.map_err(fail)?;
    }
    *target = doc;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_deletes_with_null_and_replaces_lists() {
        let mut doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "list": [1, 2]});
        merge_patch(
            &mut doc,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}, "list": [3]}),
        );
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "list": [3]})
        );
    }

    #[test]
    fn strategic_merge_patch_merges_lists_by_key() {
        let mut pod = json!({
            "spec": {"containers": [
                {"name": "a", "image": "x", "ports": [{"containerPort": 80, "name": "http"}]},
                {"name": "b", "image": "y"}
            ]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]}
        });
        strategic_merge_patch(
            &mut pod,
            &json!({
                "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "spec": {"containers": [{"name": "a", "image": "z"}, {"name": "b", "$patch": "delete"}]},
                "status": {"conditions": [{"type": "Ready", "status": "False"}]}
            }),
        );
        assert_eq!(
            pod,
            json!({
                "spec": {"containers": [
                    {"name": "a", "image": "z", "ports": [{"containerPort": 80, "name": "http"}]}
                ]},
                "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}]}
            })
        );
        let mut m = json!({"a": {"x": 1, "y": 2}});
        strategic_merge_patch(&mut m, &json!({"a": {"$patch": "replace", "z": 3}}));
        assert_eq!(m, json!({"a": {"z": 3}}));
    }

    #[test]
    fn json_patch_is_all_or_nothing() {
        let mut doc = json!({"metadata": {"labels": {"a/b": "1"}}, "l": [1]});
        json_patch(
            &mut doc,
            &json!([
                {"op": "remove", "path": "/metadata/labels/a~1b"},
                {"op": "add", "path": "/l/-", "value": 2},
                {"op": "replace", "path": "/l/0", "value": 0},
                {"op": "test", "path": "/l", "value": [0, 2]}
            ]),
        )
        .unwrap();
        assert_eq!(doc, json!({"metadata": {"labels": {}}, "l": [0, 2]}));
        let before = doc.clone();
        let e = json_patch(
            &mut doc,
            &json!([{"op": "add", "path": "/x", "value": 1}, {"op": "remove", "path": "/nope"}]),
        );
        assert!(matches!(e, Err(PatchError::Operation { index: 1, .. })));
        assert_eq!(doc, before);
    }
}
