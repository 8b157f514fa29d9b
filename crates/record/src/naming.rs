//! File names from patterns (R-ST-3): `{StreamID}_{StartYear}-…` and friends.
//!
//! Rendering only substitutes placeholders with validated names and digits, so the
//! result is a safe key segment as long as the pattern's literal text is; `check_pattern`
//! makes sure of that when the config is loaded.

use chrono::{DateTime, Datelike, FixedOffset, Timelike, Utc};

pub struct NameVars<'a> {
    pub stream: &'a str,
    pub domain: &'a str,
    pub app: &'a str,
    pub task_id: &'a str,
    pub format: &'a str,
    pub seq: u64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Seconds east of UTC the time placeholders are written in (R-ST-3: UTC unless a
    /// time zone is configured).
    pub utc_offset_s: i32,
}

/// Parses a configured time zone: `UTC`, `Z`, or a fixed offset `+HH:MM` / `-HH:MM`.
/// Named zones (with daylight saving) are not supported: a file name must not jump an
/// hour twice a year.
pub fn parse_offset(s: &str) -> Result<i32, String> {
    if s.eq_ignore_ascii_case("utc") || s == "Z" {
        return Ok(0);
    }
    let bad = || format!("{s:?}: expected \"UTC\" or an offset like \"+08:00\"");
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i32 = h.parse().map_err(|_| bad())?;
    let m: i32 = m.parse().map_err(|_| bad())?;
    if h > 14 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

const TIME_FIELDS: [&str; 7] = [
    "Year",
    "Month",
    "Day",
    "Hour",
    "Minute",
    "Second",
    "Millisecond",
];

fn time_field(t: &DateTime<FixedOffset>, field: &str) -> Option<String> {
    Some(match field {
        "Year" => format!("{:04}", t.year()),
        "Month" => format!("{:02}", t.month()),
        "Day" => format!("{:02}", t.day()),
        "Hour" => format!("{:02}", t.hour()),
        "Minute" => format!("{:02}", t.minute()),
        "Second" => format!("{:02}", t.second()),
        "Millisecond" => format!("{:03}", t.timestamp_subsec_millis()),
        _ => return None,
    })
}

fn placeholder(name: &str, v: &NameVars<'_>) -> Option<String> {
    match name {
        "StreamID" => Some(v.stream.to_string()),
        "Domain" => Some(v.domain.to_string()),
        "App" => Some(v.app.to_string()),
        "TaskId" => Some(v.task_id.to_string()),
        "Format" => Some(v.format.to_string()),
        "Seq" => Some(v.seq.to_string()),
        _ => {
            let tz = FixedOffset::east_opt(v.utc_offset_s)
                .unwrap_or_else(|| FixedOffset::east_opt(0).expect("UTC"));
            if let Some(f) = name.strip_prefix("Start") {
                time_field(&v.start.with_timezone(&tz), f)
            } else if let Some(f) = name.strip_prefix("End") {
                time_field(&v.end.with_timezone(&tz), f)
            } else {
                None
            }
        }
    }
}

fn is_placeholder(name: &str) -> bool {
    matches!(
        name,
        "StreamID" | "Domain" | "App" | "TaskId" | "Format" | "Seq"
    ) || ["Start", "End"].iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|f| TIME_FIELDS.contains(&f))
    })
}

/// Checks a pattern: braces balanced, placeholders known, literal text from the
/// name alphabet (so no `/`, `..`-only or control bytes can reach an object key).
pub fn check_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > 200 {
        return Err("must be 1-200 bytes".into());
    }
    let mut rest = p;
    let mut literal = String::new();
    while let Some(open) = rest.find('{') {
        literal.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or("unclosed `{`")?;
        let name = &after[..close];
        if !is_placeholder(name) {
            return Err(format!("unknown placeholder {{{name}}}"));
        }
        rest = &after[close + 1..];
    }
    literal.push_str(rest);
    if let Some(b) = literal
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
    {
        return Err(format!(
            "literal text may only use A-Z a-z 0-9 . _ - (found {:?})",
            b as char
        ));
    }
    Ok(())
}

/// Renders a checked pattern. Unknown placeholders (impossible after `check_pattern`)
/// are kept literally.
pub fn render(p: &str, v: &NameVars<'_>) -> String {
    let mut out = String::with_capacity(p.len() + 32);
    let mut rest = p;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                match placeholder(name, v) {
                    Some(s) => out.push_str(&s),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn vars() -> NameVars<'static> {
        NameVars {
            stream: "cam1",
            domain: "example.com",
            app: "live",
            task_id: "t1",
            format: "flv",
            seq: 7,
            start: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
                + chrono::Duration::milliseconds(6),
            end: Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 58).unwrap(),
            utc_offset_s: 0,
        }
    }

    #[test]
    fn configured_offset_moves_every_time_field_across_day_and_year() {
        let p = "{StartYear}{StartMonth}{StartDay}-{StartHour}{StartMinute}_{EndYear}{EndMonth}{EndDay}-{EndHour}{EndMinute}{EndSecond}";
        let mut v = vars();
        v.utc_offset_s = parse_offset("+08:00").unwrap();
        // 23:59:58 UTC on Dec 31 is 07:59:58 on Jan 1 of the next year at +08:00.
        assert_eq!(render(p, &v), "20260102-1104_20270101-075958");
        v.utc_offset_s = parse_offset("-05:30").unwrap();
        assert_eq!(render(p, &v), "20260101-2134_20261231-182958");
        assert_eq!(parse_offset("UTC"), Ok(0));
        assert_eq!(parse_offset("Z"), Ok(0));
        for bad in ["+8", "08:00", "+24:00", "+08:60", "Asia/Shanghai", ""] {
            assert!(parse_offset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_pattern() {
        let p = "{StreamID}_{StartYear}-{StartMonth}-{StartDay}-{StartHour}-{StartMinute}-{StartSecond}_{EndYear}-{EndMonth}-{EndDay}-{EndHour}-{EndMinute}-{EndSecond}";
        check_pattern(p).unwrap();
        assert_eq!(
            render(p, &vars()),
            "cam1_2026-01-02-03-04-05_2026-12-31-23-59-58"
        );
    }

    #[test]
    fn every_placeholder() {
        let p =
            "{Domain}.{App}.{StreamID}.{TaskId}.{Format}.{Seq}.{StartMillisecond}.{EndMillisecond}";
        check_pattern(p).unwrap();
        assert_eq!(render(p, &vars()), "example.com.live.cam1.t1.flv.7.006.000");
    }

    #[test]
    fn bad_patterns() {
        assert!(check_pattern("{Nope}").is_err());
        assert!(check_pattern("{StreamID").is_err());
        assert!(check_pattern("a/{StreamID}").is_err());
        assert!(check_pattern("").is_err());
        assert!(check_pattern("{StartWeek}").is_err());
    }
}
