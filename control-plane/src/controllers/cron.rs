//! Cron schedules as CronJobs write them (the standard five fields that upstream parses with
//! robfig/cron's `ParseStandard`): minute, hour, day of month, month, day of week; `*` and
//! `?`, ranges `a-b`, steps `*/n`, `a/n` and `a-b/n`, lists, month and weekday names
//! (`jan`, `SUN`), the descriptors `@yearly` `@annually` `@monthly` `@weekly` `@daily`
//! `@midnight` `@hourly` and `@every <duration>`, and a `CRON_TZ=` / `TZ=` prefix. When both
//! day fields are restricted a day matches either (cron's rule); otherwise both.
//!
//! Times are matched on the zone's wall clock: a wall-clock time skipped by a DST change never
//! fires, one repeated fires at each occurrence (robfig's behaviour). Schedules are untrusted
//! input: parsing never panics and every search is bounded (five years, like robfig).
//!
//! Owns parsing and the next/most-recent fire times; it must not decide what a CronJob does.
use std::time::Duration;

use k8s_openapi::jiff::{
    civil::DateTime,
    tz::{AmbiguousOffset, TimeZone},
    Timestamp,
};

/// Why a schedule or time zone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// Not five fields (or an unknown descriptor).
    #[error("expected exactly 5 fields, found {found}: {schedule:?}")]
    FieldCount {
        /// How many fields there were.
        found: usize,
        /// The schedule.
        schedule: String,
    },
    /// A field part that is not a number, name, range or step.
    #[error("failed to parse {field} {part:?}: {why}")]
    Field {
        /// Which field.
        field: &'static str,
        /// The offending part.
        part: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A descriptor that is not one of the known ones.
    #[error("unrecognized descriptor: {0:?}")]
    Descriptor(String),
    /// `@every` with a duration that does not parse.
    #[error("failed to parse duration {0:?}: use e.g. 90s or 1h30m")]
    Duration(String),
    /// The time zone is unknown or its name is not a zone name.
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
}

/// One field's allowed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    bits: u64,
    /// `*` or `?` (for the day-of-month / day-of-week rule).
    star: bool,
}

impl Field {
    fn has(&self, value: u32) -> bool {
        value < 64 && self.bits & (1u64 << value) != 0
    }
}

struct Bounds {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [(&'static str, u32)],
}

const MINUTE: Bounds = Bounds {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Bounds = Bounds {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Bounds = Bounds {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Bounds = Bounds {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        ("jan", 1),
        ("feb", 2),
        ("mar", 3),
        ("apr", 4),
        ("may", 5),
        ("jun", 6),
        ("jul", 7),
        ("aug", 8),
        ("sep", 9),
        ("oct", 10),
        ("nov", 11),
        ("dec", 12),
    ],
};
const DOW: Bounds = Bounds {
    name: "day of week",
    min: 0,
    max: 6,
    names: &[
        ("sun", 0),
        ("mon", 1),
        ("tue", 2),
        ("wed", 3),
        ("thu", 4),
        ("fri", 5),
        ("sat", 6),
    ],
};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    zone: TimeZone,
}

#[derive(Debug, Clone)]
enum Kind {
    Fields {
        minute: Field,
        hour: Field,
        dom: Field,
        month: Field,
        dow: Field,
    },
    Every(Duration),
}

/// How far ahead a search looks before giving up (robfig's five years).
const SEARCH_YEARS: i16 = 5;

fn field_error(bounds: &Bounds, part: &str, why: &'static str) -> CronError {
    CronError::Field {
        field: bounds.name,
        part: part.to_owned(),
        why,
    }
}

fn number_or_name(text: &str, bounds: &Bounds, part: &str) -> Result<u32, CronError> {
    let lower = text.to_ascii_lowercase();
    if let Some((_, value)) = bounds.names.iter().find(|(name, _)| *name == lower) {
        return Ok(*value);
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(field_error(bounds, part, "not a number"));
    }
    text.parse::<u32>()
        .map_err(|_| field_error(bounds, part, "number too large"))
}

/// One comma-separated part: `*`, `?`, `a`, `a-b`, each with an optional `/step`.
fn parse_part(part: &str, bounds: &Bounds) -> Result<Field, CronError> {
    let (range, step) = match part.split_once('/') {
        Some((range, step)) => {
            if step.contains('/') {
                return Err(field_error(bounds, part, "too many slashes"));
            }
            if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
                return Err(field_error(bounds, part, "the step is not a number"));
            }
            let step: u32 = step
                .parse()
                .map_err(|_| field_error(bounds, part, "the step is too large"))?;
            (range, Some(step))
        }
        None => (part, None),
    };
    let (start, end, star) = if range == "*" || range == "?" {
        (bounds.min, bounds.max, true)
    } else {
        match range.split_once('-') {
            Some((low, high)) => {
                if high.contains('-') {
                    return Err(field_error(bounds, part, "too many hyphens"));
                }
                (
                    number_or_name(low, bounds, part)?,
                    number_or_name(high, bounds, part)?,
                    false,
                )
            }
            None => {
                let start = number_or_name(range, bounds, part)?;
                // `a/n` means `a-max/n`.
                let end = if step.is_some() { bounds.max } else { start };
                (start, end, false)
            }
        }
    };
    if start < bounds.min {
        return Err(field_error(bounds, part, "below the minimum"));
    }
    if end > bounds.max {
        return Err(field_error(bounds, part, "above the maximum"));
    }
    if start > end {
        return Err(field_error(bounds, part, "the range is backwards"));
    }
    let step = step.unwrap_or(1);
    if step == 0 {
        return Err(field_error(bounds, part, "the step must be positive"));
    }
    let mut bits = 0u64;
    let mut value = start;
    while value <= end {
        bits |= 1u64 << value;
        value = match value.checked_add(step) {
            Some(next) => next,
            None => break,
        };
    }
    Ok(Field {
        bits,
        star: star && step == 1,
    })
}

fn parse_field(text: &str, bounds: &Bounds) -> Result<Field, CronError> {
    let mut field = Field {
        bits: 0,
        star: false,
    };
    for part in text.split(',') {
        if part.is_empty() {
            return Err(field_error(bounds, text, "empty list element"));
        }
        let parsed = parse_part(part, bounds)?;
        field.bits |= parsed.bits;
        field.star |= parsed.star;
    }
    Ok(field)
}

/// Parses a Go duration (`1h30m`, `90s`, `1.5h`): what `@every` takes.
fn parse_go_duration(text: &str) -> Option<Duration> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds;
        if !total.is_finite() || total > 1e12 {
            return None;
        }
    }
    if negative {
        return Some(Duration::ZERO);
    }
    Some(Duration::from_secs(total.floor() as u64))
}

/// Loads a time zone by IANA name from the system's zoneinfo (`UTC` needs no file).
pub fn load_zone(name: &str) -> Result<TimeZone, CronError> {
    if name == "UTC" || name == "Etc/UTC" || name.is_empty() {
        return Ok(TimeZone::UTC);
    }
    let sane = name.len() <= 255
        && !name.starts_with('/')
        && !name
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-/".contains(&b));
    if !sane || name.eq_ignore_ascii_case("local") {
        return Err(CronError::TimeZone(name.to_owned()));
    }
    let path = std::path::Path::new("/usr/share/zoneinfo").join(name);
    let data = std::fs::read(&path).map_err(|_| CronError::TimeZone(name.to_owned()))?;
    TimeZone::tzif(name, &data).map_err(|_| CronError::TimeZone(name.to_owned()))
}

/// Parses a schedule in `default_zone` (the CronJob's `timeZone`, else UTC); a `CRON_TZ=` or
/// `TZ=` prefix overrides it, through `load`.
pub fn parse_with(
    schedule: &str,
    default_zone: TimeZone,
    load: impl Fn(&str) -> Result<TimeZone, CronError>,
) -> Result<Schedule, CronError> {
    let mut text = schedule.trim();
    let mut zone = default_zone;
    for prefix in ["CRON_TZ=", "TZ="] {
        if let Some(rest) = text.strip_prefix(prefix) {
            let (name, remainder) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            zone = load(name)?;
            text = remainder.trim();
            break;
        }
    }
    let expanded = if let Some(descriptor) = text.strip_prefix('@') {
        match descriptor.to_ascii_lowercase().as_str() {
            "yearly" | "annually" => "0 0 1 1 *",
            "monthly" => "0 0 1 * *",
            "weekly" => "0 0 * * 0",
            "daily" | "midnight" => "0 0 * * *",
            "hourly" => "0 * * * *",
            every if every.starts_with("every ") || every.starts_with("every\t") => {
                let duration = every[6..].trim();
                // Under a second (zero or negative included) means every second, as robfig's
                // `Every` rounds.
                let delay = parse_go_duration(duration)
                    .ok_or_else(|| CronError::Duration(duration.to_owned()))?
                    .max(Duration::from_secs(1));
                return Ok(Schedule {
                    kind: Kind::Every(delay),
                    zone,
                });
            }
            _ => return Err(CronError::Descriptor(text.to_owned())),
        }
    } else {
        text
    };
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(CronError::FieldCount {
            found: fields.len(),
            schedule: schedule.to_owned(),
        });
    }
    Ok(Schedule {
        kind: Kind::Fields {
            minute: parse_field(fields[0], &MINUTE)?,
            hour: parse_field(fields[1], &HOUR)?,
            dom: parse_field(fields[2], &DOM)?,
            month: parse_field(fields[3], &MONTH)?,
            dow: parse_field(fields[4], &DOW)?,
        },
        zone,
    })
}

/// Parses a schedule, loading zones from the system.
pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, CronError> {
    let zone = match time_zone {
        Some(name) => load_zone(name)?,
        None => TimeZone::UTC,
    };
    parse_with(schedule, zone, load_zone)
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(year) => 29,
        _ => 28,
    }
}

/// 0 = Sunday (Howard Hinnant's days-from-civil).
fn weekday(year: i32, month: u32, day: u32) -> u32 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i32;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i32 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    // 1970-01-01 was a Thursday (4).
    (days + 4).rem_euclid(7) as u32
}

/// A wall-clock minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Civil {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
}

impl Civil {
    fn of(dt: DateTime) -> Self {
        Self {
            year: i32::from(dt.year()),
            month: dt.month() as u32,
            day: dt.day() as u32,
            hour: dt.hour() as u32,
            minute: dt.minute() as u32,
        }
    }

    fn next_day(self) -> Self {
        if self.day < days_in_month(self.year, self.month) {
            Self {
                day: self.day + 1,
                hour: 0,
                minute: 0,
                ..self
            }
        } else {
            self.next_month()
        }
    }

    fn next_month(self) -> Self {
        if self.month < 12 {
            Self {
                month: self.month + 1,
                day: 1,
                hour: 0,
                minute: 0,
                ..self
            }
        } else {
            Self {
                year: self.year + 1,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
            }
        }
    }

    fn next_hour(self) -> Self {
        if self.hour < 23 {
            Self {
                hour: self.hour + 1,
                minute: 0,
                ..self
            }
        } else {
            self.next_day()
        }
    }

    fn next_minute(self) -> Self {
        if self.minute < 59 {
            Self {
                minute: self.minute + 1,
                ..self
            }
        } else {
            self.next_hour()
        }
    }

    fn to_datetime(self) -> Option<DateTime> {
        DateTime::new(
            i16::try_from(self.year).ok()?,
            i8::try_from(self.month).ok()?,
            i8::try_from(self.day).ok()?,
            i8::try_from(self.hour).ok()?,
            i8::try_from(self.minute).ok()?,
            0,
            0,
        )
        .ok()
    }
}

impl Schedule {
    /// The first matching wall-clock minute at or after `from`, within the search horizon.
    fn next_civil(&self, from: Civil, limit_year: i32) -> Option<Civil> {
        let Kind::Fields {
            minute,
            hour,
            dom,
            month,
            dow,
        } = &self.kind
        else {
            return None;
        };
        let mut c = from;
        // Each step moves forward by at least a minute and at most 60 + 24 + 31 + 12 steps
        // pass per day matched; the year limit bounds the whole search.
        while c.year <= limit_year {
            if !month.has(c.month) {
                c = c.next_month();
                continue;
            }
            let dom_ok = dom.has(c.day);
            let dow_ok = dow.has(weekday(c.year, c.month, c.day));
            let day_ok = if dom.star || dow.star {
                dom_ok && dow_ok
            } else {
                dom_ok || dow_ok
            };
            if !day_ok {
                c = c.next_day();
                continue;
            }
            if !hour.has(c.hour) {
                c = c.next_hour();
                continue;
            }
            if !minute.has(c.minute) {
                c = c.next_minute();
                continue;
            }
            return Some(c);
        }
        None
    }

    /// The instants at which a wall-clock minute happens (none in a DST gap, two in a fold).
    fn instants(&self, c: Civil) -> Vec<Timestamp> {
        let Some(dt) = c.to_datetime() else {
            return Vec::new();
        };
        let ambiguous = self.zone.to_ambiguous_timestamp(dt);
        match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { .. } => ambiguous.compatible().into_iter().collect(),
            AmbiguousOffset::Gap { .. } => Vec::new(),
            AmbiguousOffset::Fold { before, after } => [before, after]
                .into_iter()
                .filter_map(|offset| offset.to_timestamp(dt).ok())
                .collect(),
        }
    }

    /// The first time after `after` the schedule fires, if any within five years.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        if let Kind::Every(delay) = &self.kind {
            let seconds = i64::try_from(delay.as_secs()).ok()?;
            return Timestamp::from_second(after.as_second().checked_add(seconds)?).ok();
        }
        let start = Civil::of(self.zone.to_datetime(after));
        let limit_year = start.year + i32::from(SEARCH_YEARS);
        let mut candidate = self.next_civil(start, limit_year)?;
        // A bounded walk: past a fold, at most two instants per minute are behind `after`.
        for _ in 0..4 {
            if let Some(instant) = self.instants(candidate).into_iter().find(|t| *t > after) {
                return Some(instant);
            }
            candidate = self.next_civil(candidate.next_minute(), limit_year)?;
        }
        // Many gap minutes in a row (a schedule inside a skipped hour): keep going, bounded.
        for _ in 0..2_000 {
            if let Some(instant) = self.instants(candidate).into_iter().find(|t| *t > after) {
                return Some(instant);
            }
            candidate = self.next_civil(candidate.next_minute(), limit_year)?;
        }
        None
    }

    /// The latest fire time in `(earliest, now]`, and whether more than 100 were missed
    /// (upstream's `mostRecentScheduleTime`, exact rather than estimated).
    pub fn most_recent(&self, earliest: Timestamp, now: Timestamp) -> Option<(Timestamp, bool)> {
        let first = self.next_after(earliest).filter(|t| *t <= now)?;
        let mut latest = first;
        for _ in 0..100 {
            match self.next_after(latest) {
                Some(t) if t <= now => latest = t,
                _ => return Some((latest, false)),
            }
        }
        // More than 100 missed: find the last one by looking back from `now` in growing
        // windows instead of walking every missed time.
        let mut window: i64 = 60;
        let span = now.as_second() - latest.as_second();
        loop {
            let from = (now.as_second() - window).max(latest.as_second());
            let from = Timestamp::from_second(from).ok()?;
            if let Some(mut t) = self.next_after(from).filter(|t| *t <= now) {
                for _ in 0..100_000 {
                    match self.next_after(t) {
                        Some(n) if n <= now => t = n,
                        _ => break,
                    }
                }
                return Some((t, true));
            }
            if window >= span {
                return Some((latest, true));
            }
            window = window.saturating_mul(2);
        }
    }
}

#[cfg(test)]
mod tests;
