//! The keyset cursor of `GET /history`: the position of a page's last row.

/// A position in the history, newest first: the last row of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The row's `event_at`.
    pub event_at: i64,
    /// The row's id.
    pub id: i64,
}

impl Cursor {
    /// The opaque text form used in `cursor=` and the `Link` header: each
    /// field's two's-complement bits as lowercase hex without leading
    /// zeros, joined by `-`.
    pub fn encode(&self) -> String {
        format!("{:x}-{:x}", self.event_at as u64, self.id as u64)
    }

    /// Parses [`Cursor::encode`]'s output, and only that: a text the
    /// encoder would not write (a `+` sign, upper case, leading zeros, more
    /// than 16 digits) is refused, so every cursor accepted has exactly one
    /// spelling (`decode(t) == Some(c)` implies `c.encode() == t`).
    pub fn decode(text: &str) -> Option<Cursor> {
        let (a, b) = text.split_once('-')?;
        Some(Cursor {
            event_at: hex_field(a)? as i64,
            id: hex_field(b)? as i64,
        })
    }
}

/// One field as [`Cursor::encode`] writes it: 1 to 16 lowercase hex
/// digits, no leading zero unless the field is `0`.
fn hex_field(text: &str) -> Option<u64> {
    let canonical = (1..=16).contains(&text.len())
        && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_including_negative_times() {
        for c in [
            Cursor { event_at: 0, id: 0 },
            Cursor {
                event_at: 1_795_000_000_000,
                id: 42,
            },
            Cursor {
                event_at: -62_135_596_800_000,
                id: i64::MAX,
            },
            Cursor {
                event_at: i64::MIN,
                id: -1,
            },
        ] {
            assert_eq!(Cursor::decode(&c.encode()), Some(c), "{}", c.encode());
        }
    }

    #[test]
    fn only_the_encoders_spelling_is_accepted() {
        assert_eq!(
            Cursor::decode("1a-2b"),
            Some(Cursor {
                event_at: 26,
                id: 43
            })
        );
        // `u64::from_str_radix` alone would take all of these.
        for text in [
            "+1a-2b",
            "1a-+2b",
            "1A-2b",
            "01a-2b",
            "1a-00",
            "00-0",
            "",
            "-",
            "1a-",
            "-2b",
            "1a-2b-3c",
            "1a 2b",
            "10000000000000000-1",
        ] {
            assert_eq!(Cursor::decode(text), None, "{text:?}");
        }
    }
}
