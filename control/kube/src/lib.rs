//! # xylem-kube
//!
//! Kubernetes objects read out of YAML the way `kubectl get … -o yaml` prints them and users
//! write them: one document, several (`---`), or a `List` (`kind: List` with `items`), in any
//! mix. Each object comes back untyped, with where it was (`document 2`, `document 1
//! items[3]`), so that the crate that knows the kind (CiliumNetworkPolicy in `xylem-policy`,
//! Service and EndpointSlice in `xylem-services`) can name the place of every error.
//!
//! It does not check an object's `apiVersion` or `kind` (beyond recognising a `List`), nor
//! deserialize it, nor keep anything: pure, no I/O.

use serde::Deserialize;
use serde_norway::Value;

/// One object of the input.
#[derive(Debug)]
pub struct Object {
    /// Where it was: `document N`, or `document N items[M]` inside a `List`.
    pub document: String,
    /// The object, untyped.
    pub value: Value,
}

/// Input that holds no readable object: YAML that does not parse, or a malformed `List`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The YAML of `document`, or its `List` wrapper at `field`, is malformed.
    #[error("{document}: {field}: {why}")]
    Invalid {
        /// Where: `document N`.
        document: String,
        /// The field of the `List` at fault, or `(document)` for YAML that does not parse.
        field: String,
        /// Why, and what to do.
        why: String,
    },
}

/// Every object of `yaml`, in order, `null` documents skipped. `items` names what a `List`'s
/// items should be, for the error when they are not a list (e.g. "policies").
pub fn objects(yaml: &str, items: &str) -> Result<Vec<Object>, Error> {
    let err = |document: &str, field: &str, why: String| Error::Invalid {
        document: document.to_owned(),
        field: field.to_owned(),
        why,
    };
    let mut out = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(yaml).enumerate() {
        let document = format!("document {}", i + 1);
        let value =
            Value::deserialize(de).map_err(|e| err(&document, "(document)", e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let Some(list) = value
            .as_mapping()
            .filter(|_| value.get("kind").and_then(Value::as_str) == Some("List"))
        else {
            out.push(Object { document, value });
            continue;
        };
        for k in list.keys() {
            let k = k.as_str().unwrap_or("?");
            if !matches!(k, "apiVersion" | "kind" | "items" | "metadata") {
                let why = "not a field of a List (apiVersion, kind, items, metadata)";
                return Err(err(&document, k, why.into()));
            }
        }
        let entries = match value.get("items") {
            Some(Value::Sequence(s)) => s.clone(),
            None | Some(Value::Null) => Vec::new(),
            Some(_) => {
                return Err(err(
                    &document,
                    "items",
                    format!("expected a list of {items}"),
                ));
            }
        };
        out.extend(entries.into_iter().enumerate().map(|(j, value)| Object {
            document: format!("{document} items[{j}]"),
            value,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(yaml: &str) -> Vec<String> {
        objects(yaml, "things")
            .unwrap()
            .into_iter()
            .map(|o| o.document)
            .collect()
    }

    #[test]
    fn documents_and_list_items_are_named_by_place() {
        let yaml = "kind: A\n---\n---\nkind: List\napiVersion: v1\nmetadata: {}\nitems:\n- kind: B\n- kind: C\n";
        assert_eq!(
            places(yaml),
            ["document 1", "document 3 items[0]", "document 3 items[1]"]
        );
        assert!(places("kind: List\nitems: null\n").is_empty());
    }

    #[test]
    fn a_malformed_list_or_document_is_an_error_naming_it() {
        let e = objects("kind: List\nextra: 1\n", "things").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("document 1: extra: not a field of a List"),
            "{e}"
        );
        let e = objects("kind: A\n---\nkind: List\nitems: 3\n", "things").unwrap_err();
        assert_eq!(
            e.to_string(),
            "document 2: items: expected a list of things"
        );
        let e = objects("kind: [\n", "things").unwrap_err();
        assert!(e.to_string().starts_with("document 1: (document): "), "{e}");
    }
}
