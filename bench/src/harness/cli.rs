//! What the benchmark binaries (`netbench`, `concentrator`) share on their
//! command line: de-duplicated lists, the start time in UTC and the default
//! output directory named after it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use super::report::Written;

/// Keeps the first occurrence of each item.
pub fn dedup<T: PartialEq + Copy>(items: &[T]) -> Vec<T> {
    let mut out = Vec::new();
    for &item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// UTC date and time from Unix seconds: ("2025-01-31", "12:34:56").
pub fn utc(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

/// Now as "YYYY-MM-DD HH:MM:SS" (UTC), and the default output directory
/// `bench-results/YYYYMMDD-HHMMSS`.
pub fn started_now() -> (String, PathBuf) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (date, time) = utc(now);
    let dir = PathBuf::from("bench-results").join(format!(
        "{}-{}",
        date.replace('-', ""),
        time.replace(':', "")
    ));
    (format!("{date} {time}"), dir)
}

/// The end of a run: prints the Markdown report to stdout, says on stderr
/// where the files went (with `detail`), and returns the exit status: 130
/// after Ctrl-C, 1 if `failed`, else 0.
pub fn conclude(
    program: &str,
    written: &Written,
    detail: &str,
    failed: bool,
    interrupted: bool,
) -> ExitCode {
    println!(
        "{}",
        std::fs::read_to_string(&written.markdown).unwrap_or_default()
    );
    eprintln!(
        "{program}: wrote {}, {} and {}; {detail}{}",
        written.json.display(),
        written.markdown.display(),
        written.svg.display(),
        if interrupted { "; interrupted" } else { "" }
    );
    if interrupted {
        ExitCode::from(130)
    } else if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), ("1970-01-01".into(), "00:00:00".into()));
        assert_eq!(utc(951_782_400), ("2000-02-29".into(), "00:00:00".into()));
        assert_eq!(utc(1_735_689_599), ("2024-12-31".into(), "23:59:59".into()));
    }

    #[test]
    fn dedup_keeps_first() {
        assert_eq!(dedup(&[3, 1, 3, 2, 1]), [3, 1, 2]);
    }
}
