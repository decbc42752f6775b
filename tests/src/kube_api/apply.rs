//! Server-side apply (`PATCH` with `application/apply-patch+yaml`), with
//! field managers and conflicts, in `metadata.managedFields` as the real
//! API server writes them (`fieldsType: FieldsV1`).
//!
//! Simplified where the tests do not need more: lists are atomic (owned
//! and replaced whole, where the real server merges keyed lists such as
//! `containers` entry by entry), and fields written by PUT or by the other
//! PATCH types are owned by nobody (so they never conflict).
//!
//! The rules kept: an apply owns the fields it sets; setting a field that
//! another manager owns to a different value is a `409 Conflict` naming
//! the manager, unless `force=true` takes it over; a field a manager
//! stops applying is removed, unless another manager still owns it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::resources::RESOURCES;
use super::store::{now_rfc3339, ApiError, ResourceId, Store};

/// A path of map keys; a list or scalar ends it.
type FieldPath = Vec<String>;

/// Fields the server owns, never a manager.
fn server_owned(path: &[String]) -> bool {
    match path {
        [top] => top == "apiVersion" || top == "kind",
        [m, f, ..] if m == "metadata" => matches!(
            f.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "managedFields"
        ),
        _ => false,
    }
}

/// The leaf paths of `v` (maps descend; an empty map is a leaf too).
fn leaves(v: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                prefix.push(k.clone());
                leaves(x, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            if !prefix.is_empty() && !server_owned(prefix) {
                out.insert(prefix.clone());
            }
        }
    }
}

fn fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut node = &mut root;
        for k in p {
            node = node
                .entry(format!("f:{k}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("built as objects");
        }
    }
    Value::Object(root)
}

fn paths_of(fields: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Some(m) = fields.as_object() else {
        return;
    };
    if m.is_empty() && !prefix.is_empty() {
        out.insert(prefix.clone());
    }
    for (k, x) in m {
        if let Some(name) = k.strip_prefix("f:") {
            prefix.push(name.to_owned());
            paths_of(x, prefix, out);
            prefix.pop();
        }
    }
}

fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn set(v: &mut Value, path: &[String], value: Value) {
    let mut node = v;
    for k in path {
        if !node.is_object() {
            *node = json!({});
        }
        node = node
            .as_object_mut()
            .expect("made an object")
            .entry(k.clone())
            .or_insert(Value::Null);
    }
    *node = value;
}

fn unset(v: &mut Value, path: &[String]) {
    let Some((last, up)) = path.split_last() else {
        return;
    };
    let Some(parent) = up.iter().try_fold(&mut *v, |v, k| v.get_mut(k)) else {
        return;
    };
    if let Some(m) = parent.as_object_mut() {
        m.remove(last);
    }
}

/// One path overlaps another when either is a prefix of the other.
fn overlaps(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// Managers' fields from `metadata.managedFields`, by manager.
fn managers(obj: &Value) -> BTreeMap<String, (String, BTreeSet<FieldPath>)> {
    let mut out = BTreeMap::new();
    for e in obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = e["manager"].as_str().unwrap_or_default().to_owned();
        let op = e["operation"].as_str().unwrap_or("Apply").to_owned();
        let mut paths = BTreeSet::new();
        paths_of(&e["fieldsV1"], &mut Vec::new(), &mut paths);
        out.insert(name, (op, paths));
    }
    out
}

fn write_managers(
    obj: &mut Value,
    api_version: &str,
    m: &BTreeMap<String, (String, BTreeSet<FieldPath>)>,
) {
    let entries: Vec<Value> = m
        .iter()
        .filter(|(_, (_, p))| !p.is_empty())
        .map(|(name, (op, paths))| {
            json!({
                "manager": name,
                "operation": op,
                "apiVersion": api_version,
                "time": now_rfc3339(),
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_v1(paths),
            })
        })
        .collect();
    obj["metadata"]["managedFields"] = json!(entries);
}

/// Applies `applied` for `manager` to the object `ns/name` (creating it).
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one PATCH request, as the API server receives them"
)]
pub fn server_side_apply(
    store: &Store,
    r: ResourceId,
    ns: &str,
    name: &str,
    applied: &Value,
    manager: &str,
    force: bool,
    status: bool,
) -> Result<Value, ApiError> {
    if manager.is_empty() {
        return Err(ApiError::new(
            400,
            "BadRequest",
            "PATCH, application/apply-patch+yaml: fieldManager is required",
        ));
    }
    let rt = &RESOURCES[r];
    let mut wanted = BTreeSet::new();
    leaves(applied, &mut Vec::new(), &mut wanted);
    // A status write applies only the status, an object write all but it.
    wanted.retain(|p| (p[0] == "status") == status || !rt.status);
    let build = |old: &Value| -> Result<Value, ApiError> {
        let mut new = old.clone();
        let mut owners = managers(old);
        let mut conflicts = Vec::new();
        for (other, (_, paths)) in owners.iter_mut().filter(|(m, _)| *m != manager) {
            let taken: Vec<FieldPath> = paths
                .iter()
                .filter(|p| {
                    wanted
                        .iter()
                        .any(|w| overlaps(p, w) && get(old, w) != get(applied, w))
                })
                .cloned()
                .collect();
            if taken.is_empty() {
                continue;
            }
            if force {
                for p in &taken {
                    paths.remove(p);
                }
            } else {
                conflicts.extend(taken.iter().map(|p| format!("{other:?}: .{}", p.join("."))));
            }
        }
        if !conflicts.is_empty() {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Apply failed with {} conflict(s): conflict with {}",
                    conflicts.len(),
                    conflicts.join(", ")
                ),
            ));
        }
        let before = owners.remove(manager).map(|(_, p)| p).unwrap_or_default();
        for gone in before.difference(&wanted) {
            let kept = owners
                .values()
                .any(|(_, p)| p.iter().any(|q| overlaps(q, gone)));
            if !kept {
                unset(&mut new, gone);
            }
        }
        for p in &wanted {
            let value = get(applied, p).cloned().unwrap_or(Value::Null);
            set(&mut new, p, value);
        }
        owners.insert(manager.to_owned(), ("Apply".to_owned(), wanted.clone()));
        write_managers(&mut new, &rt.api_version(), &owners);
        Ok(new)
    };
    match store.get(r, ns, name) {
        Ok(_) => store.update(r, ns, name, |old| {
            let mut new = build(old)?;
            // Optimistic concurrency does not apply to apply.
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
            Ok(new)
        }),
        Err(e) if e.code == 404 => {
            let mut fresh = json!({"metadata": {"name": name}});
            if rt.namespaced {
                fresh["metadata"]["namespace"] = json!(ns);
            }
            let obj = build(&fresh)?;
            store.create(r, ns, obj)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_fields_round_trip() {
        let obj =
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [1], "x": {"y": 2}}});
        let mut paths = BTreeSet::new();
        leaves(&obj, &mut Vec::new(), &mut paths);
        let v1 = fields_v1(&paths);
        assert_eq!(
            v1,
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:ports": {}, "f:x": {"f:y": {}}}})
        );
        let mut back = BTreeSet::new();
        paths_of(&v1, &mut Vec::new(), &mut back);
        assert_eq!(back, paths);
    }
}
