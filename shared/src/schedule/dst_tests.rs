//! The rule for the days a zone's clock changes, in three zones: New York and Berlin (the clock
//! moves by an hour, at 02:00 local and at 01:00 UTC) and Lord Howe Island (it moves by 30
//! minutes), on both change days of 2026, for single times, lists, ranges, steps and wildcards.

use chrono::{DateTime, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use super::{parse_time_zone, Schedule};

fn utc(text: &str) -> DateTime<Utc> {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn zone(name: &str) -> Tz {
    parse_time_zone(name, "timezone").unwrap()
}

/// The next `n` fires of `expression` in `tz` strictly after `from`.
fn fires(expression: &str, tz: &str, from: &str, n: usize) -> Vec<DateTime<Utc>> {
    let schedule = Schedule::parse(
        expression,
        zone(tz),
        utc("2026-01-01T00:00:00Z"),
        "schedule",
    )
    .unwrap_or_else(|e| panic!("{expression}: {e}"));
    schedule.upcoming(utc(from), n)
}

fn all(texts: &[&str]) -> Vec<DateTime<Utc>> {
    texts.iter().map(|t| utc(t)).collect()
}

/// The tests below rest on these being the change days; checked, not assumed.
#[test]
fn the_change_days_are_where_the_tests_expect() {
    let local = |tz: &str, y, mo, d, h, mi| {
        zone(tz).from_local_datetime(
            &NaiveDate::from_ymd_opt(y, mo, d)
                .unwrap()
                .and_hms_opt(h, mi, 0)
                .unwrap(),
        )
    };
    let skipped = |r: LocalResult<_>| matches!(r, LocalResult::None);
    let repeated = |r: LocalResult<_>| matches!(r, LocalResult::Ambiguous(..));
    assert!(skipped(local("America/New_York", 2026, 3, 8, 2, 30)));
    assert!(repeated(local("America/New_York", 2026, 11, 1, 1, 30)));
    assert!(skipped(local("Europe/Berlin", 2026, 3, 29, 2, 30)));
    assert!(repeated(local("Europe/Berlin", 2026, 10, 25, 2, 30)));
    assert!(skipped(local("Australia/Lord_Howe", 2026, 10, 4, 2, 15)));
    assert!(!skipped(local("Australia/Lord_Howe", 2026, 10, 4, 2, 30)));
    assert!(repeated(local("Australia/Lord_Howe", 2026, 4, 5, 1, 45)));
    assert!(!repeated(local("Australia/Lord_Howe", 2026, 4, 5, 1, 15)));
}

// ----- New York: 2026-03-08 02:00 EST becomes 03:00 EDT (07:00Z) -----

#[test]
fn new_york_spring_named_times_skipped_fire_once_after_the_gap() {
    let ny = "America/New_York";
    let from = "2026-03-07T20:00:00Z";
    // A single time.
    assert_eq!(
        fires("30 2 * * *", ny, from, 2),
        all(&["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"])
    );
    // A list: 02:00 fires at 03:00 EDT, 14:00 as usual.
    assert_eq!(
        fires("0 2,14 * * *", ny, from, 3),
        all(&[
            "2026-03-08T07:00:00Z",
            "2026-03-08T18:00:00Z",
            "2026-03-09T06:00:00Z"
        ])
    );
    // A range: the skipped 02:00 and the real 03:00 are the same instant, fired once.
    assert_eq!(
        fires("0 1-3 * * *", ny, from, 4),
        all(&[
            "2026-03-08T06:00:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-09T05:00:00Z",
            "2026-03-09T06:00:00Z"
        ])
    );
    // Every 20 minutes of a named hour: all three skipped, one fire after the gap.
    assert_eq!(
        fires("*/20 2 * * *", ny, from, 2),
        all(&["2026-03-08T07:00:00Z", "2026-03-09T06:00:00Z"])
    );
}

#[test]
fn new_york_spring_stepping_hours_fire_by_elapsed_time() {
    let ny = "America/New_York";
    // Hourly: 00:30 EST, 01:30 EST, then 03:30 EDT an hour later; no 02:30.
    assert_eq!(
        fires("30 * * * *", ny, "2026-03-08T05:00:00Z", 3),
        all(&[
            "2026-03-08T05:30:00Z",
            "2026-03-08T06:30:00Z",
            "2026-03-08T07:30:00Z"
        ])
    );
    // Every other hour: 00:00 EST, then 04:00 EDT (02:00 does not exist).
    assert_eq!(
        fires("0 */2 * * *", ny, "2026-03-08T04:00:00Z", 2),
        all(&["2026-03-08T05:00:00Z", "2026-03-08T08:00:00Z"])
    );
    // Every minute: 01:59 EST, then 03:00 EDT, a minute apart.
    assert_eq!(
        fires("* * * * *", ny, "2026-03-08T06:58:00Z", 3),
        all(&[
            "2026-03-08T06:59:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T07:01:00Z"
        ])
    );
    assert_eq!(
        fires("@hourly", ny, "2026-03-08T06:30:00Z", 2),
        all(&["2026-03-08T07:00:00Z", "2026-03-08T08:00:00Z"])
    );
}

// ----- New York: 2026-11-01 02:00 EDT becomes 01:00 EST (06:00Z) -----

#[test]
fn new_york_fall_named_times_repeated_fire_once() {
    let ny = "America/New_York";
    let from = "2026-10-31T18:00:00Z";
    assert_eq!(
        fires("30 1 * * *", ny, from, 2),
        all(&["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"])
    );
    assert_eq!(
        fires("0 1,13 * * *", ny, from, 3),
        all(&[
            "2026-11-01T05:00:00Z",
            "2026-11-01T18:00:00Z",
            "2026-11-02T06:00:00Z"
        ])
    );
    // 00:30 EDT, 01:30 EDT (once), 02:30 EST.
    assert_eq!(
        fires("30 0-2 * * *", ny, from, 4),
        all(&[
            "2026-11-01T04:30:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-01T07:30:00Z",
            "2026-11-02T05:30:00Z"
        ])
    );
    // Every 20 minutes of the repeated hour: three fires, not six.
    assert_eq!(
        fires("*/20 1 * * *", ny, from, 4),
        all(&[
            "2026-11-01T05:00:00Z",
            "2026-11-01T05:20:00Z",
            "2026-11-01T05:40:00Z",
            "2026-11-02T06:00:00Z"
        ])
    );
    // Asked from inside the second occurrence, the repeated time does not fire again.
    assert_eq!(
        fires("30 1 * * *", ny, "2026-11-01T06:10:00Z", 1),
        all(&["2026-11-02T06:30:00Z"])
    );
}

#[test]
fn new_york_fall_stepping_hours_fire_by_elapsed_time() {
    let ny = "America/New_York";
    // Hourly: both 01:30s, an hour apart.
    assert_eq!(
        fires("30 * * * *", ny, "2026-11-01T04:00:00Z", 4),
        all(&[
            "2026-11-01T04:30:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-01T06:30:00Z",
            "2026-11-01T07:30:00Z"
        ])
    );
    // Every other hour: 00:00 EDT, 02:00 EST.
    assert_eq!(
        fires("0 */2 * * *", ny, "2026-11-01T03:00:00Z", 3),
        all(&[
            "2026-11-01T04:00:00Z",
            "2026-11-01T07:00:00Z",
            "2026-11-01T09:00:00Z"
        ])
    );
    // Every half hour from inside the first 01:00-02:00: on through the second one.
    assert_eq!(
        fires("*/30 * * * *", ny, "2026-11-01T05:00:00Z", 4),
        all(&[
            "2026-11-01T05:30:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T06:30:00Z",
            "2026-11-01T07:00:00Z"
        ])
    );
}

// ----- Berlin: 2026-03-29 02:00 CET becomes 03:00 CEST; 2026-10-25 03:00 CEST becomes 02:00 CET -----

#[test]
fn berlin_spring() {
    let berlin = "Europe/Berlin";
    let from = "2026-03-28T14:00:00Z";
    assert_eq!(
        fires("30 2 * * *", berlin, from, 2),
        all(&["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"])
    );
    assert_eq!(
        fires("0 2,14 * * *", berlin, from, 3),
        all(&[
            "2026-03-29T01:00:00Z",
            "2026-03-29T12:00:00Z",
            "2026-03-30T00:00:00Z"
        ])
    );
    assert_eq!(
        fires("15 * * * *", berlin, "2026-03-29T00:00:00Z", 2),
        all(&["2026-03-29T00:15:00Z", "2026-03-29T01:15:00Z"])
    );
}

#[test]
fn berlin_fall() {
    let berlin = "Europe/Berlin";
    let from = "2026-10-24T12:00:00Z";
    assert_eq!(
        fires("30 2 * * *", berlin, from, 2),
        all(&["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"])
    );
    assert_eq!(
        fires("0 2,3 * * *", berlin, from, 3),
        all(&[
            "2026-10-25T00:00:00Z",
            "2026-10-25T02:00:00Z",
            "2026-10-26T01:00:00Z"
        ])
    );
    assert_eq!(
        fires("15 * * * *", berlin, "2026-10-25T00:00:00Z", 3),
        all(&[
            "2026-10-25T00:15:00Z",
            "2026-10-25T01:15:00Z",
            "2026-10-25T02:15:00Z"
        ])
    );
}

// ----- Lord Howe: +10:30 and +11:00; 2026-04-05 02:00 becomes 01:30, 2026-10-04 02:00 becomes 02:30 -----

#[test]
fn lord_howe_fall_half_an_hour_repeated() {
    let lord_howe = "Australia/Lord_Howe";
    assert_eq!(
        fires("45 1 * * *", lord_howe, "2026-04-04T00:00:00Z", 2),
        all(&["2026-04-04T14:45:00Z", "2026-04-05T15:15:00Z"])
    );
    assert_eq!(
        fires("0,45 1 * * *", lord_howe, "2026-04-04T00:00:00Z", 3),
        all(&[
            "2026-04-04T14:00:00Z",
            "2026-04-04T14:45:00Z",
            "2026-04-05T14:30:00Z"
        ])
    );
    // Every quarter hour: 01:45 (+11), 01:30 (+10:30) fifteen minutes later, 01:45, 02:00.
    assert_eq!(
        fires("*/15 * * * *", lord_howe, "2026-04-04T14:40:00Z", 4),
        all(&[
            "2026-04-04T14:45:00Z",
            "2026-04-04T15:00:00Z",
            "2026-04-04T15:15:00Z",
            "2026-04-04T15:30:00Z"
        ])
    );
}

#[test]
fn lord_howe_spring_half_an_hour_skipped() {
    let lord_howe = "Australia/Lord_Howe";
    assert_eq!(
        fires("15 2 * * *", lord_howe, "2026-10-03T00:00:00Z", 2),
        all(&["2026-10-03T15:30:00Z", "2026-10-04T15:15:00Z"])
    );
    // 02:00 and 02:15 are skipped and fire once, at 02:30; 02:45 as usual.
    assert_eq!(
        fires("0,15,45 2 * * *", lord_howe, "2026-10-03T00:00:00Z", 3),
        all(&[
            "2026-10-03T15:30:00Z",
            "2026-10-03T15:45:00Z",
            "2026-10-04T15:00:00Z"
        ])
    );
    assert_eq!(
        fires("*/15 * * * *", lord_howe, "2026-10-03T15:10:00Z", 3),
        all(&[
            "2026-10-03T15:15:00Z",
            "2026-10-03T15:30:00Z",
            "2026-10-03T15:45:00Z"
        ])
    );
}

#[test]
fn at_inside_a_gap_fires_after_it_and_inside_a_fold_at_its_first_occurrence() {
    let once = |text: &str, tz: &str| {
        Schedule::parse(text, zone(tz), Utc::now(), "schedule")
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .first_at_or_after(Utc::now())
    };
    let ny = "America/New_York";
    assert_eq!(
        once("at(2026-03-08T02:30:00)", ny),
        Some(utc("2026-03-08T07:00:00Z"))
    );
    assert_eq!(
        once("at(2026-11-01T01:30:00)", ny),
        Some(utc("2026-11-01T05:30:00Z"))
    );
    assert_eq!(
        once("at(2026-10-04T02:15:00)", "Australia/Lord_Howe"),
        Some(utc("2026-10-03T15:30:00Z"))
    );
}

#[test]
fn a_day_field_starting_with_a_star_counts_as_unrestricted() {
    // Vixie cron: `*/2` days of the month AND Mondays (odd days that are Mondays), not OR: March
    // 2026's Mondays are the 2nd, 9th, 16th, 23rd and 30th.
    assert_eq!(
        fires("0 0 */2 * mon", "UTC", "2026-03-01T00:00:00Z", 3),
        all(&[
            "2026-03-09T00:00:00Z",
            "2026-03-23T00:00:00Z",
            "2026-04-13T00:00:00Z"
        ])
    );
    // The 13th AND every other weekday from Sunday (Sun, Tue, Thu, Sat).
    assert_eq!(
        fires("0 0 13 * */2", "UTC", "2026-03-01T00:00:00Z", 1),
        all(&["2026-06-13T00:00:00Z"])
    );
    // Both restricted without a star: either matches.
    assert_eq!(
        fires("0 0 1-2 * mon", "UTC", "2026-02-28T12:00:00Z", 3),
        all(&[
            "2026-03-01T00:00:00Z",
            "2026-03-02T00:00:00Z",
            "2026-03-09T00:00:00Z"
        ])
    );
}

#[test]
fn fires_never_repeat_or_go_back_across_a_year_of_changes() {
    for tz in ["America/New_York", "Europe/Berlin", "Australia/Lord_Howe"] {
        for expression in ["*/15 * * * *", "30 1,2 * * *", "0 */3 * * *"] {
            // A year of every-quarter-hour fires is 35,040.
            let fires = fires(expression, tz, "2026-01-01T00:00:00Z", 35_040);
            assert!(
                fires.windows(2).all(|w| w[0] < w[1]),
                "{expression} in {tz}"
            );
        }
    }
}
