//! Unit tests of the cron parser and fire-time search: every syntax form, both day-field
//! rules, descriptors, time zones with DST, refusals, and a no-panic sweep over generated
//! garbage.
use super::*;

fn ts(text: &str) -> Timestamp {
    match text.parse() {
        Ok(t) => t,
        Err(e) => panic!("bad test timestamp {text}: {e}"),
    }
}

fn utc(schedule: &str) -> Schedule {
    match parse(schedule, None) {
        Ok(s) => s,
        Err(e) => panic!("{schedule:?} should parse: {e}"),
    }
}

/// The next `n` fire times after `from`, as RFC 3339 strings.
fn fires(schedule: &Schedule, from: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut t = ts(from);
    for _ in 0..n {
        match schedule.next_after(t) {
            Some(next) => {
                out.push(next.to_string());
                t = next;
            }
            None => break,
        }
    }
    out
}

#[test]
fn every_minute_fires_on_the_next_whole_minute() {
    let s = utc("* * * * *");
    assert_eq!(
        fires(&s, "2025-01-01T10:00:00Z", 2),
        ["2025-01-01T10:01:00Z", "2025-01-01T10:02:00Z"]
    );
    assert_eq!(
        fires(&s, "2025-01-01T10:00:30Z", 1),
        ["2025-01-01T10:01:00Z"]
    );
    assert_eq!(
        fires(&s, "2025-12-31T23:59:59Z", 1),
        ["2026-01-01T00:00:00Z"]
    );
}

#[test]
fn steps_ranges_and_lists() {
    assert_eq!(
        fires(&utc("*/15 * * * *"), "2025-01-01T10:00:00Z", 4),
        [
            "2025-01-01T10:15:00Z",
            "2025-01-01T10:30:00Z",
            "2025-01-01T10:45:00Z",
            "2025-01-01T11:00:00Z"
        ]
    );
    assert_eq!(
        fires(&utc("5-10/2 * * * *"), "2025-01-01T10:00:00Z", 4),
        [
            "2025-01-01T10:05:00Z",
            "2025-01-01T10:07:00Z",
            "2025-01-01T10:09:00Z",
            "2025-01-01T11:05:00Z"
        ]
    );
    // `a/n` means from a to the maximum.
    assert_eq!(
        fires(&utc("50/5 * * * *"), "2025-01-01T10:00:00Z", 3),
        [
            "2025-01-01T10:50:00Z",
            "2025-01-01T10:55:00Z",
            "2025-01-01T11:50:00Z"
        ]
    );
    assert_eq!(
        fires(&utc("0 6,18 * * *"), "2025-01-01T07:00:00Z", 2),
        ["2025-01-01T18:00:00Z", "2025-01-02T06:00:00Z"]
    );
    assert_eq!(
        fires(&utc("0 0 1,15 * *"), "2025-01-02T00:00:00Z", 2),
        ["2025-01-15T00:00:00Z", "2025-02-01T00:00:00Z"]
    );
}

#[test]
fn names_are_case_insensitive() {
    // 2025-01-01 is a Wednesday.
    let s = utc("0 9 * * MON-fri");
    assert_eq!(
        fires(&s, "2025-01-03T10:00:00Z", 2),
        ["2025-01-06T09:00:00Z", "2025-01-07T09:00:00Z"],
        "Friday 10:00 → Monday"
    );
    assert_eq!(
        fires(&utc("0 0 1 jul,DEC *"), "2025-01-01T00:00:00Z", 2),
        ["2025-07-01T00:00:00Z", "2025-12-01T00:00:00Z"]
    );
    assert_eq!(
        fires(&utc("0 0 * * Sun"), "2025-01-01T00:00:00Z", 1),
        ["2025-01-05T00:00:00Z"]
    );
}

#[test]
fn day_of_month_and_week_match_either_when_both_are_restricted() {
    // The 13th, and every Friday (2025-06-06 and 2025-06-13 are Fridays).
    let either = utc("0 0 13 * 5");
    assert_eq!(
        fires(&either, "2025-06-01T00:00:00Z", 3),
        [
            "2025-06-06T00:00:00Z",
            "2025-06-13T00:00:00Z",
            "2025-06-20T00:00:00Z"
        ]
    );
    // With one of them `*` or `?`, both must hold: Fridays only.
    let fridays = utc("0 0 ? * 5");
    assert_eq!(
        fires(&fridays, "2025-06-01T00:00:00Z", 1),
        ["2025-06-06T00:00:00Z"]
    );
    // A stepped star is a restriction: "*/2" days or Fridays.
    let stepped = utc("0 0 */10 * 5");
    assert_eq!(
        fires(&stepped, "2025-06-01T00:00:00Z", 2),
        ["2025-06-06T00:00:00Z", "2025-06-11T00:00:00Z"]
    );
}

#[test]
fn descriptors() {
    let from = "2025-05-14T10:30:00Z";
    assert_eq!(fires(&utc("@hourly"), from, 1), ["2025-05-14T11:00:00Z"]);
    assert_eq!(fires(&utc("@daily"), from, 1), ["2025-05-15T00:00:00Z"]);
    assert_eq!(fires(&utc("@midnight"), from, 1), ["2025-05-15T00:00:00Z"]);
    assert_eq!(fires(&utc("@weekly"), from, 1), ["2025-05-18T00:00:00Z"]);
    assert_eq!(fires(&utc("@monthly"), from, 1), ["2025-06-01T00:00:00Z"]);
    assert_eq!(fires(&utc("@yearly"), from, 1), ["2026-01-01T00:00:00Z"]);
    assert_eq!(fires(&utc("@ANNUALLY"), from, 1), ["2026-01-01T00:00:00Z"]);
    assert_eq!(
        fires(&utc("@every 90s"), from, 2),
        ["2025-05-14T10:31:30Z", "2025-05-14T10:33:00Z"]
    );
    assert_eq!(
        fires(&utc("@every 1h30m"), from, 1),
        ["2025-05-14T12:00:00Z"]
    );
    // Under a second is every second.
    for short in ["@every 500ms", "@every 0s", "@every -5s"] {
        assert_eq!(
            fires(&utc(short), from, 1),
            ["2025-05-14T10:30:01Z"],
            "{short}"
        );
    }
}

#[test]
fn impossible_dates_never_fire_and_leap_days_do() {
    assert!(utc("59 23 31 2 *")
        .next_after(ts("2025-01-01T00:00:00Z"))
        .is_none());
    assert!(utc("0 0 31 4,6,9,11 *")
        .next_after(ts("2025-01-01T00:00:00Z"))
        .is_none());
    assert_eq!(
        fires(&utc("0 0 29 2 *"), "2025-01-01T00:00:00Z", 2),
        ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
    );
}

#[test]
fn bad_schedules_are_refused() {
    for bad in [
        "",
        "* * * *",
        "* * * * * *",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * 32 * *",
        "* * * 0 *",
        "* * * 13 *",
        "* * * * 7",
        "*/0 * * * *",
        "5-1 * * * *",
        "a * * * *",
        "1-2-3 * * * *",
        "1/2/3 * * * *",
        ", * * * *",
        "1,,2 * * * *",
        "-1 * * * *",
        "99999999999 * * * *",
        "1/99999999999 * * * *",
        "*/ * * * *",
        "/5 * * * *",
        "@foo",
        "@every",
        "@every 10x",
        "@every 5",
        "@every 1h-",
        "@every 1e400h",
        "* * * foo *",
        "* * * * funday",
        "1-* * * * *",
        "TZ=../../etc/passwd * * * * *",
        "CRON_TZ=/etc/localtime * * * * *",
        "TZ=No/Such_Zone * * * * *",
        "TZ=Local * * * * *",
    ] {
        assert!(parse(bad, None).is_err(), "{bad:?} should be refused");
    }
    assert!(parse("* * * * *", Some("No/Such_Zone")).is_err());
    assert!(matches!(
        parse("* * *", None),
        Err(CronError::FieldCount { found: 3, .. })
    ));
}

#[test]
fn time_zones_follow_the_wall_clock_through_dst() {
    let eastern = || {
        TimeZone::posix("EST5EDT,M3.2.0,M11.1.0")
            .map_err(|_| CronError::TimeZone("EST5EDT".to_owned()))
    };
    let Ok(zone) = eastern() else {
        panic!("a POSIX zone");
    };
    let at = |schedule: &str| match parse_with(schedule, zone.clone(), |_| eastern()) {
        Ok(s) => s,
        Err(e) => panic!("{schedule:?}: {e}"),
    };
    // 09:00 Eastern is 14:00 UTC in winter, 13:00 UTC in summer.
    assert_eq!(
        fires(&at("0 9 * * *"), "2025-03-08T15:00:00Z", 2),
        ["2025-03-09T13:00:00Z", "2025-03-10T13:00:00Z"]
    );
    // 02:30 does not exist on 2025-03-09 (spring forward): that day is skipped.
    assert_eq!(
        fires(&at("30 2 * * *"), "2025-03-08T12:00:00Z", 2),
        ["2025-03-10T06:30:00Z", "2025-03-11T06:30:00Z"]
    );
    // 01:30 happens twice on 2025-11-02 (fall back): both fire.
    assert_eq!(
        fires(&at("30 1 * * *"), "2025-11-01T12:00:00Z", 3),
        [
            "2025-11-02T05:30:00Z",
            "2025-11-02T06:30:00Z",
            "2025-11-03T06:30:00Z"
        ]
    );
    // A CRON_TZ prefix overrides the default zone, through the loader.
    let loader = |name: &str| {
        if name == "America/Test" {
            eastern()
        } else {
            Err(CronError::TimeZone(name.to_owned()))
        }
    };
    let prefixed = match parse_with("CRON_TZ=America/Test 0 9 * * *", TimeZone::UTC, loader) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        fires(&prefixed, "2025-01-01T00:00:00Z", 1),
        ["2025-01-01T14:00:00Z"]
    );
    assert!(parse_with("TZ=Other 0 9 * * *", TimeZone::UTC, loader).is_err());
}

#[test]
fn zone_names_are_checked_before_any_file_is_read() {
    assert!(load_zone("UTC").is_ok());
    for bad in [
        "../etc/passwd",
        "/etc/localtime",
        "Europe/../../etc",
        "a//b",
        "Local",
        "x y",
        "Europe/Paris\n",
    ] {
        assert!(load_zone(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn the_most_recent_missed_time_is_exact_even_after_a_long_outage() {
    let s = utc("* * * * *");
    assert_eq!(
        s.most_recent(ts("2025-01-01T10:00:00Z"), ts("2025-01-01T10:05:30Z")),
        Some((ts("2025-01-01T10:05:00Z"), false))
    );
    assert_eq!(
        s.most_recent(ts("2025-01-01T10:00:00Z"), ts("2025-01-01T10:00:59Z")),
        None
    );
    // Years of missed minutes: found without walking all of them.
    assert_eq!(
        s.most_recent(ts("2020-01-01T00:00:00Z"), ts("2025-01-01T10:05:30Z")),
        Some((ts("2025-01-01T10:05:00Z"), true))
    );
    let hourly_in_one_hour = utc("* 3 * * *");
    assert_eq!(
        hourly_in_one_hour.most_recent(ts("2024-01-01T00:00:00Z"), ts("2025-01-01T10:00:00Z")),
        Some((ts("2025-01-01T03:59:00Z"), true))
    );
}

#[test]
fn generated_garbage_never_panics() {
    const ALPHABET: &[u8] = b"0123456789*/-,? @abcdefghjklmnorstuvwxyzJANSUNFRI=_\t9999";
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let from = ts("2025-01-01T00:00:00Z");
    let mut parsed = 0;
    for _ in 0..20_000 {
        let len = (next() % 24) as usize;
        let text: String = (0..len)
            .map(|_| char::from(ALPHABET[(next() % ALPHABET.len() as u64) as usize]))
            .collect();
        if let Ok(schedule) = parse_with(&text, TimeZone::UTC, |_| Ok(TimeZone::UTC)) {
            parsed += 1;
            let _ = schedule.next_after(from);
            let _ = schedule.most_recent(from, ts("2025-01-02T00:00:00Z"));
        }
    }
    // Also random five-field schedules from valid pieces, which parse far more often.
    let pieces = [
        "*", "?", "*/3", "1-5", "0", "7/4", "1,2,30", "mon-fri", "jan", "2-3/1",
    ];
    for _ in 0..5_000 {
        let text: Vec<&str> = (0..5)
            .map(|_| pieces[(next() % pieces.len() as u64) as usize])
            .collect();
        if let Ok(schedule) = parse(&text.join(" "), None) {
            parsed += 1;
            if let Some(t) = schedule.next_after(from) {
                assert!(t > from, "{text:?}");
            }
        }
    }
    assert!(parsed > 100, "the sweep exercised the search too: {parsed}");
}
