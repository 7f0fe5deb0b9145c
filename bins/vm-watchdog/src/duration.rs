//! Durations as operators write them: `90` (seconds), `90s`, `15m`, `2h`,
//! `1d`, and sums such as `1h30m`. Used by `vms.yaml`, the admin API and
//! the Telegram commands (`/mute web-1 2h`).

use std::time::Duration;

/// The longest duration accepted anywhere (a maintenance or a mute of more
/// than 30 days is almost certainly a typo).
pub const MAX: Duration = Duration::from_secs(30 * 24 * 3_600);

/// Parses `text`: a whole number of seconds, or one or more `<n><unit>`
/// parts with `unit` one of `s`, `m`, `h`, `d`. Zero and anything above
/// [`MAX`] are rejected.
///
/// # Errors
/// A sentence saying what is wrong, quoting `text`.
///
/// ```
/// use std::time::Duration;
/// use vm_watchdog::duration::parse;
/// assert_eq!(parse("90").unwrap(), Duration::from_secs(90));
/// assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5_400));
/// assert!(parse("2 weeks").is_err());
/// ```
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("`{text}` is not a duration (write 90s, 15m, 2h, 1d or 1h30m)");
    if t.is_empty() {
        return Err(bad());
    }
    let total = if let Ok(secs) = t.parse::<u64>() {
        secs
    } else {
        let mut total: u64 = 0;
        let mut number = String::new();
        for c in t.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3_600,
                'd' => 86_400,
                _ => return Err(bad()),
            };
            let n: u64 = number.parse().map_err(|_| bad())?;
            number.clear();
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
        }
        if !number.is_empty() {
            return Err(bad());
        }
        total
    };
    let d = Duration::from_secs(total);
    if d.is_zero() {
        return Err(format!("`{text}` must be more than zero"));
    }
    if d > MAX {
        return Err(format!("`{text}` is longer than 30 days"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_operators_write() {
        for (text, secs) in [
            ("45", 45),
            ("45s", 45),
            ("15m", 900),
            ("2h", 7_200),
            ("1d", 86_400),
            ("1h30m", 5_400),
            (" 10m ", 600),
        ] {
            assert_eq!(parse(text).unwrap(), Duration::from_secs(secs), "{text}");
        }
        for text in [
            "", "0", "0s", "h", "2x", "1.5h", "-1", "31d", "2h 30m", "10m5",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }
}
