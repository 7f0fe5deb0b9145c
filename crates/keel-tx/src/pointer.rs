//! JSON Pointer (RFC 6901) navigation and JSON Merge Patch (RFC 7396).
//!
//! Changes are planned on a borrowed document first ([`plan`]) and written
//! afterwards ([`write`]), so a transaction can journal a change (with its
//! before and after values) before the working copy is touched.

use serde_json::{Map, Value};

use crate::error::{InvalidChange, PathProblem};

/// A parsed JSON Pointer: the empty list is the whole document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pointer {
    tokens: Vec<String>,
}

impl Pointer {
    /// Parses RFC 6901 syntax: `""` or `/token/token...`, with `~1` for `/`
    /// and `~0` for `~`.
    pub(crate) fn parse(path: &str) -> Result<Pointer, InvalidChange> {
        if path.is_empty() {
            return Ok(Pointer { tokens: Vec::new() });
        }
        let Some(rest) = path.strip_prefix('/') else {
            return Err(InvalidChange::new(path, PathProblem::Syntax));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            tokens
                .push(unescape(raw).ok_or_else(|| InvalidChange::new(path, PathProblem::Syntax))?);
        }
        Ok(Pointer { tokens })
    }

    #[cfg(test)]
    pub(crate) fn from_tokens(tokens: Vec<String>) -> Pointer {
        Pointer { tokens }
    }

    fn split_last(&self) -> Option<(&[String], &str)> {
        self.tokens
            .split_last()
            .map(|(last, parent)| (parent, last.as_str()))
    }

    fn with_last(&self, last: String) -> Pointer {
        let mut tokens = self.tokens.clone();
        if let Some(slot) = tokens.last_mut() {
            *slot = last;
        }
        Pointer { tokens }
    }
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for token in &self.tokens {
            f.write_str("/")?;
            f.write_str(&token.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

fn unescape(raw: &str) -> Option<String> {
    if !raw.contains('~') {
        return Some(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// RFC 6901 array index: `0` or a digit string without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let valid = token == "0"
        || (!token.is_empty()
            && !token.starts_with('0')
            && token.bytes().all(|b| b.is_ascii_digit()));
    if valid { token.parse().ok() } else { None }
}

/// The value at `pointer`, if any.
pub(crate) fn get<'a>(doc: &'a Value, pointer: &Pointer) -> Option<&'a Value> {
    let mut current = doc;
    for token in &pointer.tokens {
        current = match current {
            Value::Object(map) => map.get(token)?,
            Value::Array(items) => items.get(array_index(token)?)?,
            _ => return None,
        };
    }
    Some(current)
}

fn get_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    let mut current = doc;
    for token in tokens {
        current = match current {
            Value::Object(map) => map.get_mut(token)?,
            Value::Array(items) => items.get_mut(array_index(token)?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// What a change will write, checked against the document but not applied.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The pointer with `-` resolved to a concrete array index.
    pub(crate) pointer: Pointer,
    /// The value there now (`None`: absent).
    pub(crate) before: Option<Value>,
}

/// Whether the planned write will put a value at the location or remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intent {
    Write,
    Remove,
}

/// Checks that `pointer` names a location that can be written (`Write`) or
/// removed (`Remove`) in `doc`, and returns the value there now.
///
/// Writing follows JSON Patch (RFC 6902) placement: the parent must exist;
/// an object member is added or replaced; an array index below the length
/// replaces that element, the length itself (or `-`) appends. Removing needs
/// an existing value and never applies to the root.
pub(crate) fn plan(doc: &Value, pointer: &Pointer, intent: Intent) -> Result<Plan, InvalidChange> {
    let path = || pointer.to_string();
    let Some((parent_tokens, last)) = pointer.split_last() else {
        if intent == Intent::Remove {
            return Err(InvalidChange::new(path(), PathProblem::RemoveRoot));
        }
        return Ok(Plan {
            pointer: pointer.clone(),
            before: Some(doc.clone()),
        });
    };
    let parent = get(
        doc,
        &Pointer {
            tokens: parent_tokens.to_vec(),
        },
    )
    .ok_or_else(|| InvalidChange::new(path(), PathProblem::ParentMissing))?;
    match parent {
        Value::Object(map) => {
            let before = map.get(last).cloned();
            if intent == Intent::Remove && before.is_none() {
                return Err(InvalidChange::new(path(), PathProblem::NotFound));
            }
            Ok(Plan {
                pointer: pointer.clone(),
                before,
            })
        }
        Value::Array(items) => {
            let index = if last == "-" {
                items.len()
            } else {
                array_index(last)
                    .ok_or_else(|| InvalidChange::new(path(), PathProblem::BadIndex))?
            };
            let limit = match intent {
                Intent::Write => items.len(),
                Intent::Remove => items.len().saturating_sub(1),
            };
            if index > limit || (intent == Intent::Remove && items.is_empty()) {
                return Err(InvalidChange::new(path(), PathProblem::IndexOutOfRange));
            }
            Ok(Plan {
                pointer: pointer.with_last(index.to_string()),
                before: items.get(index).cloned(),
            })
        }
        _ => Err(InvalidChange::new(path(), PathProblem::ParentNotContainer)),
    }
}

/// Writes `value` at a location [`plan`] accepted (`None` removes it).
///
/// Returns `false` without touching `doc` if the location is no longer valid,
/// which cannot happen for a plan made on the same, unchanged document.
pub(crate) fn write(doc: &mut Value, pointer: &Pointer, value: Option<Value>) -> bool {
    let Some((parent_tokens, last)) = pointer.split_last() else {
        match value {
            Some(v) => {
                *doc = v;
                return true;
            }
            None => return false,
        }
    };
    let Some(parent) = get_mut(doc, parent_tokens) else {
        return false;
    };
    match parent {
        Value::Object(map) => {
            match value {
                Some(v) => {
                    map.insert(last.to_owned(), v);
                }
                None => {
                    if map.remove(last).is_none() {
                        return false;
                    }
                }
            }
            true
        }
        Value::Array(items) => {
            let Some(index) = array_index(last) else {
                return false;
            };
            match value {
                Some(v) if index < items.len() => items[index] = v,
                Some(v) if index == items.len() => items.push(v),
                None if index < items.len() => {
                    items.remove(index);
                }
                _ => return false,
            }
            true
        }
        _ => false,
    }
}

/// Applies an RFC 7396 merge patch to `target` in place: object members of
/// the patch are merged recursively, `null` members remove, anything that is
/// not an object replaces the target.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target_map) = target {
        for (key, value) in patch_map {
            if value.is_null() {
                target_map.remove(key);
            } else {
                merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn p(s: &str) -> Pointer {
        Pointer::parse(s).expect("valid pointer")
    }

    #[test]
    fn rfc6901_examples_resolve() {
        // The example document of RFC 6901 section 5.
        let doc = json!({
            "foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "e^f": 3,
            "g|h": 4, "i\\j": 5, "k\"l": 6, " ": 7, "m~n": 8
        });
        assert_eq!(get(&doc, &p("")), Some(&doc));
        assert_eq!(get(&doc, &p("/foo")), Some(&json!(["bar", "baz"])));
        assert_eq!(get(&doc, &p("/foo/0")), Some(&json!("bar")));
        assert_eq!(get(&doc, &p("/")), Some(&json!(0)));
        assert_eq!(get(&doc, &p("/a~1b")), Some(&json!(1)));
        assert_eq!(get(&doc, &p("/c%d")), Some(&json!(2)));
        assert_eq!(get(&doc, &p("/ ")), Some(&json!(7)));
        assert_eq!(get(&doc, &p("/m~0n")), Some(&json!(8)));
        assert_eq!(
            get(&doc, &p("/foo/01")),
            None,
            "leading zero is not an index"
        );
        assert_eq!(get(&doc, &p("/foo/2")), None);
    }

    #[test]
    fn bad_syntax_is_rejected() {
        for bad in ["foo", "/a~2", "/a~"] {
            let err = Pointer::parse(bad).unwrap_err();
            assert_eq!(err.problem, PathProblem::Syntax, "{bad}");
        }
    }

    #[test]
    fn planning_follows_json_patch_placement() {
        let doc = json!({"spec": {"workers": [1, 2]}, "n": 1});
        // Member add / replace.
        assert_eq!(
            plan(&doc, &p("/spec/masters"), Intent::Write)
                .unwrap()
                .before,
            None
        );
        assert_eq!(
            plan(&doc, &p("/n"), Intent::Write).unwrap().before,
            Some(json!(1))
        );
        // Array replace, append by length and by "-".
        let append = plan(&doc, &p("/spec/workers/-"), Intent::Write).unwrap();
        assert_eq!(append.pointer.to_string(), "/spec/workers/2");
        assert_eq!(append.before, None);
        assert!(plan(&doc, &p("/spec/workers/2"), Intent::Write).is_ok());
        assert_eq!(
            plan(&doc, &p("/spec/workers/3"), Intent::Write)
                .unwrap_err()
                .problem,
            PathProblem::IndexOutOfRange
        );
        assert_eq!(
            plan(&doc, &p("/spec/workers/x"), Intent::Write)
                .unwrap_err()
                .problem,
            PathProblem::BadIndex
        );
        // Parent must exist and be a container.
        assert_eq!(
            plan(&doc, &p("/status/phase"), Intent::Write)
                .unwrap_err()
                .problem,
            PathProblem::ParentMissing
        );
        assert_eq!(
            plan(&doc, &p("/n/x"), Intent::Write).unwrap_err().problem,
            PathProblem::ParentNotContainer
        );
        // Removal needs a value and never the root.
        assert_eq!(
            plan(&doc, &p("/x"), Intent::Remove).unwrap_err().problem,
            PathProblem::NotFound
        );
        assert_eq!(
            plan(&doc, &p(""), Intent::Remove).unwrap_err().problem,
            PathProblem::RemoveRoot
        );
        assert_eq!(
            plan(&doc, &p("/spec/workers/2"), Intent::Remove)
                .unwrap_err()
                .problem,
            PathProblem::IndexOutOfRange
        );
    }

    #[test]
    fn rfc7396_examples_merge() {
        // Test cases from RFC 7396 appendix A.
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (mut target, patch, expected) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, expected, "patch {patch}");
        }
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-z~/]{0,4}".prop_map(Value::from),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c~/]{1,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn pointer_display_round_trips(tokens in prop::collection::vec("[a-z0-9~/]{0,5}", 0..5)) {
            let pointer = Pointer::from_tokens(tokens);
            prop_assert_eq!(Pointer::parse(&pointer.to_string()).unwrap(), pointer);
        }

        #[test]
        fn merge_patch_is_idempotent(target in json_value(), patch in json_value()) {
            let mut once = target.clone();
            merge_patch(&mut once, &patch);
            let mut twice = once.clone();
            merge_patch(&mut twice, &patch);
            prop_assert_eq!(once, twice);
        }

        #[test]
        fn write_then_restore_before_is_identity(
            doc in json_value(),
            key in "[a-c~/]{1,2}",
            value in json_value(),
            remove in any::<bool>(),
        ) {
            // Place the key under the root object (or a fresh one) and check that
            // writing then writing back the planned `before` restores the document.
            let doc = match doc { Value::Object(m) => Value::Object(m), other => serde_json::json!({"x": other}) };
            let pointer = Pointer::from_tokens(vec![key]);
            let intent = if remove { Intent::Remove } else { Intent::Write };
            if let Ok(planned) = plan(&doc, &pointer, intent) {
                let mut changed = doc.clone();
                let after = if remove { None } else { Some(value.clone()) };
                prop_assert!(write(&mut changed, &planned.pointer, after.clone()));
                prop_assert_eq!(get(&changed, &planned.pointer).cloned(), after);
                prop_assert!(write(&mut changed, &planned.pointer, planned.before.clone()) || planned.before.is_none());
                prop_assert_eq!(changed, doc);
            }
        }

        #[test]
        fn array_writes_match_plans(items in prop::collection::vec(any::<i8>(), 0..5), index in 0usize..7, remove in any::<bool>()) {
            let doc = serde_json::json!({"a": items});
            let pointer = Pointer::parse(&format!("/a/{index}")).unwrap();
            let intent = if remove { Intent::Remove } else { Intent::Write };
            let planned = plan(&doc, &pointer, intent);
            let len = items.len();
            let valid = if remove { index < len } else { index <= len };
            prop_assert_eq!(planned.is_ok(), valid);
            if let Ok(planned) = planned {
                let mut changed = doc.clone();
                let after = if remove { None } else { Some(Value::from("new")) };
                prop_assert!(write(&mut changed, &planned.pointer, after));
                let new_len = changed["a"].as_array().unwrap().len();
                let expected_len = if remove { len - 1 } else if index == len { len + 1 } else { len };
                prop_assert_eq!(new_len, expected_len);
            }
        }
    }
}
