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
    /// The opaque text form used in `cursor=` and the `Link` header.
    pub fn encode(&self) -> String {
        format!("{:x}-{:x}", self.event_at as u64, self.id as u64)
    }

    /// Parses [`Cursor::encode`]'s output.
    pub fn decode(text: &str) -> Option<Cursor> {
        let (a, b) = text.split_once('-')?;
        Some(Cursor {
            event_at: u64::from_str_radix(a, 16).ok()? as i64,
            id: u64::from_str_radix(b, 16).ok()? as i64,
        })
    }
}
