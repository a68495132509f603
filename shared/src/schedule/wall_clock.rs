//! Cron patterns on a time zone's wall clock, and the rule for the days its clock changes.
//!
//! croner matches a pattern against wall-clock times (naive local date-times, so it never sees a
//! clock change); this module turns each matching wall time into the instants it fires at:
//! - a pattern whose hour field **names** its hours (`2`, `1,13`, `9-17`, `@daily`) fires once per
//!   matching wall time. A time the change skips (a spring-forward gap) fires at the first instant
//!   after the gap, and several skipped times fire there once together; a time the change repeats
//!   (a fall-back fold) fires at its first occurrence only;
//! - a pattern whose hour field **steps** through the hours (it starts with `*`: `*`, `*/2`,
//!   `@hourly`) fires by elapsed time, as cronie and Vixie cron do for their "wildcard" jobs: at every
//!   instant whose wall time matches, so nothing in a skipped hour and both occurrences of a repeated
//!   one.
//!
//! The search assumes what every zone in the tz database has done since 1970: a clock change moves
//! the clock by at most three hours, and two changes are more than a day apart.

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// How a pattern's hour field reads across a clock change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HourField {
    /// It names hours (`2`, `1,13`, `9-17`): each matching wall time fires once.
    Named,
    /// It steps through the hours (`*`, `*/2`): it fires by elapsed time.
    Stepping,
}

impl HourField {
    /// The kind of an hour field as written (`?` already read as `*`).
    pub fn of(field: &str) -> HourField {
        if field.trim_start().starts_with('*') {
            HourField::Stepping
        } else {
            HourField::Named
        }
    }
}

/// A cron pattern read on the wall clock of `tz`.
#[derive(Debug, Clone)]
pub struct ZonedCron {
    cron: Cron,
    tz: Tz,
    hours: HourField,
}

/// The largest clock change the search allows for.
const MAX_CHANGE: Duration = Duration::hours(3);

/// Wall times looked at in one search, at most: a pattern firing every second walks about an hour of
/// them around a clock change, and the common case looks at one.
const MAX_CANDIDATES: usize = 100_000;

/// What one matching wall time fires at.
struct Fires {
    /// No later wall time fires before this instant (the wall time's first instant, or for a time
    /// in a gap the end of the gap): what ends the search.
    bound: DateTime<Utc>,
    /// The instants it fires at: one, or two for a repeated time under [`HourField::Stepping`].
    at: [Option<DateTime<Utc>>; 2],
}

impl ZonedCron {
    pub fn new(cron: Cron, tz: Tz, hours: HourField) -> ZonedCron {
        ZonedCron { cron, tz, hours }
    }

    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The first fire strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let wall = after.with_timezone(&self.tz).naive_local();
        // A wall time already passed may still have its second occurrence ahead: when a fall-back
        // is coming, a stepping pattern looks back by its size.
        let lookback = match self.hours {
            HourField::Named => Duration::zero(),
            HourField::Stepping => (self.offset_at(after) - self.offset_at(after + MAX_CHANGE))
                .clamp(Duration::zero(), MAX_CHANGE),
        };
        let mut cursor = wall - lookback;
        let mut best: Option<DateTime<Utc>> = None;
        for _ in 0..MAX_CANDIDATES {
            let candidate = self.cron.find_next_occurrence(&cursor, false).ok()?;
            let fires = self.fires_of(candidate);
            for at in fires.at.into_iter().flatten().filter(|at| *at > after) {
                best = Some(best.map_or(at, |b| b.min(at)));
            }
            // Wall times match in order and their first instants never go back: nothing later can
            // fire before `bound`.
            if let Some(best) = best.filter(|best| *best <= fires.bound) {
                return Some(best);
            }
            cursor = candidate;
        }
        best
    }

    /// The fires of one matching wall time.
    fn fires_of(&self, wall: NaiveDateTime) -> Fires {
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(at) => Fires {
                bound: at.with_timezone(&Utc),
                at: [Some(at.with_timezone(&Utc)), None],
            },
            LocalResult::Ambiguous(first, second) => Fires {
                bound: first.with_timezone(&Utc),
                at: [
                    Some(first.with_timezone(&Utc)),
                    (self.hours == HourField::Stepping).then(|| second.with_timezone(&Utc)),
                ],
            },
            LocalResult::None => {
                let end = gap_end(self.tz, wall);
                Fires {
                    bound: end,
                    at: [(self.hours == HourField::Named).then_some(end), None],
                }
            }
        }
    }

    fn offset_at(&self, at: DateTime<Utc>) -> Duration {
        let wall = at.with_timezone(&self.tz).naive_local();
        wall - at.naive_utc()
    }
}

/// The instant a wall time names in `tz`: its first occurrence when the clock repeats it, and the
/// first instant after the gap when the clock skips it.
pub fn instant_of(tz: Tz, wall: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(at) => at.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => gap_end(tz, wall),
    }
}

/// The first instant after the gap that skips wall time `wall`: the change itself, where the wall
/// clock jumps past `wall`. Found by bisection to the second (zones change on whole seconds).
fn gap_end(tz: Tz, wall: NaiveDateTime) -> DateTime<Utc> {
    let wall_at = |at: DateTime<Utc>| at.with_timezone(&tz).naive_local();
    // UTC offsets lie within -12 h and +14 h, so the change lies within these bounds of `wall` read
    // as UTC; the wall clock is before `wall` at `low` and past it at `high`.
    let mut low = wall.and_utc() - Duration::hours(15);
    let mut high = wall.and_utc() + Duration::hours(15);
    while high - low > Duration::seconds(1) {
        let middle = low + (high - low) / 2;
        if wall_at(middle) > wall {
            high = middle;
        } else {
            low = middle;
        }
    }
    // Whole seconds: the change's own instant.
    DateTime::from_timestamp(high.timestamp(), 0).unwrap_or(high)
}
