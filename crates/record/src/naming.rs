//! File names from patterns (R-ST-3): `{StreamID}_{StartYear}-…` and friends.
//!
//! Rendering only substitutes placeholders with validated names and digits, so the
//! result is a safe key segment as long as the pattern's literal text is; `check_pattern`
//! makes sure of that when the config is loaded.

use chrono::{DateTime, Datelike, Timelike, Utc};

pub struct NameVars<'a> {
    pub stream: &'a str,
    pub domain: &'a str,
    pub app: &'a str,
    pub task_id: &'a str,
    pub format: &'a str,
    pub seq: u64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
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

fn time_field(t: &DateTime<Utc>, field: &str) -> Option<String> {
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
            if let Some(f) = name.strip_prefix("Start") {
                time_field(&v.start, f)
            } else if let Some(f) = name.strip_prefix("End") {
                time_field(&v.end, f)
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
