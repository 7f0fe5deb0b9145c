//! Idempotency keys, request fingerprints and the canonical JSON they hash.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::InvalidDigest;

/// The name of one execute-once operation: a SHA-256 digest over an
/// operation name and its parameters.
///
/// Two keys are equal exactly when the operation name and the parameters are
/// equal as JSON values: object member order never changes a key, because
/// the parameters are hashed in a canonical form (object members sorted by
/// name, no insignificant whitespace). The digest is what every store keeps,
/// hex-encoded (64 characters), so keys are fixed-size and safe to use as
/// Redis keys and PostgreSQL primary keys whatever the parameters contain.
///
/// Computing a key costs one `serde_json` serialization plus one SHA-256 over
/// the canonical bytes (a few hundred nanoseconds for small parameters).
///
/// ```
/// use keel_idempotency::IdempotencyKey;
/// use serde_json::json;
///
/// let a = IdempotencyKey::new("create-instance", &json!({"cluster": "c1", "count": 3}))?;
/// let b = IdempotencyKey::new("create-instance", &json!({"count": 3, "cluster": "c1"}))?;
/// assert_eq!(a, b);
/// assert_ne!(a, IdempotencyKey::new("delete-instance", &json!({"cluster": "c1", "count": 3}))?);
/// assert_eq!(a.to_string().len(), 64);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey([u8; 32]);

impl IdempotencyKey {
    /// The key of operation `operation` with parameters `params` (anything
    /// serde can serialize: a tuple, a struct, a `serde_json::Value`).
    ///
    /// Fails only when `params` cannot be represented as JSON (for instance
    /// a map whose keys are not strings).
    pub fn new<P: Serialize + ?Sized>(
        operation: &str,
        params: &P,
    ) -> Result<Self, serde_json::Error> {
        let params = serde_json::to_value(params)?;
        Ok(Self::from_value(operation, &params))
    }

    /// The key of operation `operation` with JSON parameters `params`
    /// (infallible: the value is already JSON).
    pub fn from_value(operation: &str, params: &Value) -> Self {
        let mut hasher = Sha256::new();
        // `[operation, params]` in canonical JSON: unambiguous whatever the
        // operation name contains.
        let mut buf = Vec::with_capacity(64);
        buf.push(b'[');
        write_json_string(&mut buf, operation);
        buf.push(b',');
        write_canonical(&mut buf, params);
        buf.push(b']');
        hasher.update(&buf);
        IdempotencyKey(hasher.finalize().into())
    }

    /// A key from a digest computed elsewhere.
    pub const fn from_digest(digest: [u8; 32]) -> Self {
        IdempotencyKey(digest)
    }

    /// The raw SHA-256 digest.
    pub const fn digest(&self) -> &[u8; 32] {
        &self.0
    }

    /// The lowercase hex form (64 characters), as stores keep it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        // Cannot fail: the buffer is exactly twice the digest length.
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({self})")
    }
}

impl FromStr for IdempotencyKey {
    type Err = InvalidDigest;

    /// Parses the 64-character hex form written by [`fmt::Display`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_digest(s).map(IdempotencyKey)
    }
}

/// A SHA-256 digest of what a request asked for, stored beside its key.
///
/// The same key sent again with a different fingerprint is a client error
/// ([`FingerprintMismatch`](crate::FingerprintMismatch)): the key was reused
/// for a different request. A fingerprint may cover the whole payload
/// ([`Fingerprint::of`], [`Fingerprint::of_bytes`]) or only chosen fields
/// ([`Fingerprint::of_fields`], by JSON pointer), so that fields which may
/// legitimately differ between retries (a client timestamp, a trace id) do
/// not count.
///
/// ```
/// use keel_idempotency::Fingerprint;
/// use serde_json::json;
///
/// let first = json!({"amount": 100, "currency": "EUR", "sent_at": "10:00"});
/// let retry = json!({"currency": "EUR", "amount": 100, "sent_at": "10:01"});
/// let fields = ["/amount", "/currency"];
/// assert_eq!(Fingerprint::of_fields(&first, &fields), Fingerprint::of_fields(&retry, &fields));
/// assert_ne!(Fingerprint::of(&first)?, Fingerprint::of(&retry)?);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of "no payload": use it when a key alone identifies
    /// the request. Equal to `Fingerprint::of_bytes(b"")`.
    pub fn empty() -> Self {
        Self::of_bytes(b"")
    }

    /// The fingerprint of a serializable payload, in canonical JSON (object
    /// member order does not matter).
    pub fn of<P: Serialize + ?Sized>(payload: &P) -> Result<Self, serde_json::Error> {
        Ok(Self::of_value(&serde_json::to_value(payload)?))
    }

    /// The fingerprint of a JSON value, in canonical form.
    pub fn of_value(payload: &Value) -> Self {
        let mut buf = Vec::with_capacity(64);
        write_canonical(&mut buf, payload);
        Self::of_bytes(&buf)
    }

    /// The fingerprint of raw bytes, as received (no canonicalization).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Fingerprint(Sha256::digest(bytes).into())
    }

    /// The fingerprint of the fields of `payload` named by JSON pointers
    /// (RFC 6901, `"/a/b/0"`), in the order given. A pointer that matches
    /// nothing counts as "absent", which differs from an explicit `null`.
    pub fn of_fields<P: AsRef<str>>(payload: &Value, pointers: &[P]) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.push(b'[');
        for (i, pointer) in pointers.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            let pointer = pointer.as_ref();
            buf.push(b'[');
            write_json_string(&mut buf, pointer);
            if let Some(value) = payload.pointer(pointer) {
                buf.push(b',');
                write_canonical(&mut buf, value);
            }
            buf.push(b']');
        }
        buf.push(b']');
        Self::of_bytes(&buf)
    }

    /// Combines several parts (for instance method, path and body) into one
    /// fingerprint; each part is length-prefixed, so `("ab", "c")` and
    /// `("a", "bc")` differ.
    pub fn of_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        Fingerprint(hasher.finalize().into())
    }

    /// A fingerprint from a digest computed elsewhere.
    pub const fn from_digest(digest: [u8; 32]) -> Self {
        Fingerprint(digest)
    }

    /// The raw SHA-256 digest.
    pub const fn digest(&self) -> &[u8; 32] {
        &self.0
    }

    /// The lowercase hex form (64 characters), as stores keep it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = InvalidDigest;

    /// Parses the 64-character hex form written by [`fmt::Display`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_digest(s).map(Fingerprint)
    }
}

fn parse_digest(s: &str) -> Result<[u8; 32], InvalidDigest> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| InvalidDigest { len: s.len() })?;
    Ok(out)
}

/// Writes `value` as canonical JSON: object members sorted by name (byte
/// order of their UTF-8 form), no whitespace, strings and numbers exactly as
/// `serde_json` prints them.
///
/// Sorting here rather than relying on `serde_json::Map` being a `BTreeMap`
/// keeps keys stable even when some crate in the build enables serde_json's
/// `preserve_order` feature.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    write_canonical(&mut buf, value);
    buf
}

fn write_canonical(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => buf.extend_from_slice(b"null"),
        Value::Bool(true) => buf.extend_from_slice(b"true"),
        Value::Bool(false) => buf.extend_from_slice(b"false"),
        Value::Number(n) => buf.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_json_string(buf, s),
        Value::Array(items) => {
            buf.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                write_canonical(buf, item);
            }
            buf.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            buf.push(b'{');
            for (i, (name, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                write_json_string(buf, name);
                buf.push(b':');
                write_canonical(buf, item);
            }
            buf.push(b'}');
        }
    }
}

fn write_json_string(buf: &mut Vec<u8>, s: &str) {
    // serde_json's string escaping cannot fail when writing into a Vec.
    serde_json::to_writer(&mut *buf, s).unwrap_or_else(|_| unreachable!("writing to a Vec"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn canonical_form_sorts_members_recursively() {
        let v = json!({"b": [{"z": 1, "a": null}], "a": "x\"y", "c": {"y": true, "x": 1.5}});
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"a":"x\"y","b":[{"a":null,"z":1}],"c":{"x":1.5,"y":true}}"#
        );
    }

    #[test]
    fn key_is_sha256_of_canonical_pair() {
        let key = IdempotencyKey::new("op", &json!({"b": 2, "a": 1})).unwrap();
        let expected: [u8; 32] = Sha256::digest(br#"["op",{"a":1,"b":2}]"#).into();
        assert_eq!(key.digest(), &expected);
        assert_eq!(key.to_hex(), hex::encode(expected));
        assert_eq!(key.to_string(), key.to_hex());
        assert_eq!(key.to_hex().parse::<IdempotencyKey>().unwrap(), key);
        assert!("zz".parse::<IdempotencyKey>().is_err());
    }

    #[test]
    fn tuples_and_structs_are_parameters() {
        #[derive(Serialize)]
        struct Params<'a> {
            cluster: &'a str,
            count: u32,
        }
        let a = IdempotencyKey::new(
            "create",
            &Params {
                cluster: "c",
                count: 2,
            },
        )
        .unwrap();
        let b = IdempotencyKey::new("create", &json!({"count": 2, "cluster": "c"})).unwrap();
        assert_eq!(a, b);
        let t = IdempotencyKey::new("create", &("c", 2)).unwrap();
        assert_ne!(a, t);
    }

    #[test]
    fn operation_name_cannot_collide_with_parameters() {
        let a = IdempotencyKey::new("a\",\"b", &json!(null)).unwrap();
        let b = IdempotencyKey::new("a", &json!("b")).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn field_fingerprints_distinguish_absent_from_null() {
        let with_null = json!({"a": null});
        let without = json!({});
        assert_ne!(
            Fingerprint::of_fields(&with_null, &["/a"]),
            Fingerprint::of_fields(&without, &["/a"])
        );
        let nested = json!({"a": {"b": [10, 20]}});
        assert_eq!(
            Fingerprint::of_fields(&nested, &["/a/b/1"]),
            Fingerprint::of_fields(&json!({"a": {"b": [0, 20], "c": 1}}), &["/a/b/1"])
        );
    }

    #[test]
    fn parts_are_length_prefixed() {
        assert_ne!(
            Fingerprint::of_parts([&b"ab"[..], b"c"]),
            Fingerprint::of_parts([&b"a"[..], b"bc"])
        );
        assert_eq!(Fingerprint::empty(), Fingerprint::of_bytes(b""));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z\"\\\\é]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-z]{0,3}", inner), 0..5)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    /// Rebuilds every object of `v` with its members inserted in reverse
    /// order (which changes the order a `preserve_order` map would keep).
    fn reversed(v: &Value) -> Value {
        match v {
            Value::Array(items) => Value::Array(items.iter().map(reversed).collect()),
            Value::Object(map) => {
                let mut members: Vec<_> = map.iter().collect();
                members.reverse();
                Value::Object(
                    members
                        .into_iter()
                        .map(|(k, v)| (k.clone(), reversed(v)))
                        .collect(),
                )
            }
            other => other.clone(),
        }
    }

    proptest! {
        #[test]
        fn member_order_never_changes_key_or_fingerprint(v in arb_json()) {
            let r = reversed(&v);
            prop_assert_eq!(IdempotencyKey::from_value("op", &v), IdempotencyKey::from_value("op", &r));
            prop_assert_eq!(Fingerprint::of_value(&v), Fingerprint::of_value(&r));
        }

        #[test]
        fn canonical_json_round_trips(v in arb_json()) {
            let bytes = canonical_json(&v);
            let back: Value = serde_json::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back, &v);
            prop_assert_eq!(canonical_json(&back), bytes);
        }

        #[test]
        fn different_values_give_different_keys(a in arb_json(), b in arb_json()) {
            prop_assume!(a != b);
            prop_assert_ne!(IdempotencyKey::from_value("op", &a), IdempotencyKey::from_value("op", &b));
        }
    }
}
