//! Exclusions (`policies.exclude`): days and patterns, read in the job's zone, whose instants the
//! schedule skips: `2026-12-25` (the whole local day), `0 * * * sat,sun` or `cron(0 * ? * SAT,SUN *)`
//! (every instant the pattern matches, with the same wall-clock rules as a schedule).

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;

use super::{Schedule, ZonedCron};
use crate::error::{Error, Result};

/// The most exclusions a job may have.
pub const MAX_EXCLUSIONS: usize = 100;

/// One exclusion.
#[derive(Debug, Clone)]
enum Exclusion {
    /// Every instant of this day on the zone's clock.
    Day(NaiveDate),
    /// Every instant the pattern fires at.
    Pattern(Box<ZonedCron>),
}

/// A job's exclusions, parsed in its zone.
#[derive(Debug, Clone)]
pub struct Exclusions {
    tz: Tz,
    items: Vec<Exclusion>,
}

impl Exclusions {
    /// Parses `items` in `tz`; errors name `{field}[i]`.
    pub fn parse(items: &[String], tz: Tz, field: &str) -> Result<Exclusions> {
        if items.len() > MAX_EXCLUSIONS {
            return Err(Error::invalid(
                field,
                format!("at most {MAX_EXCLUSIONS} exclusions"),
            ));
        }
        let parsed = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let field = format!("{field}[{i}]");
                let text = item.trim();
                if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
                    return Ok(Exclusion::Day(day));
                }
                match Schedule::parse(text, tz, DateTime::<Utc>::UNIX_EPOCH, &field) {
                    Ok(Schedule::Cron(cron)) => Ok(Exclusion::Pattern(cron)),
                    _ => Err(Error::invalid(
                        field,
                        format!(
                            "{text:?} is neither a date (2026-12-25) nor a cron pattern \
                             (0 * * * sat,sun, cron(0 * ? * SAT,SUN *))"
                        ),
                    )),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Exclusions { tz, items: parsed })
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether the schedule skips `instant`.
    pub fn excludes(&self, instant: DateTime<Utc>) -> bool {
        self.items.iter().any(|item| match item {
            Exclusion::Day(day) => instant.with_timezone(&self.tz).date_naive() == *day,
            // A pattern matches an instant it would fire at itself.
            Exclusion::Pattern(cron) => {
                cron.next_after(instant - Duration::milliseconds(1)) == Some(instant)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::parse_time_zone;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn exclusions(items: &[&str], zone: &str) -> Exclusions {
        let items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        Exclusions::parse(&items, parse_time_zone(zone, "tz").unwrap(), "exclude").unwrap()
    }

    #[test]
    fn a_day_is_the_zones_whole_day() {
        let christmas = exclusions(&["2026-12-25"], "America/New_York");
        // 04:59 UTC on the 25th is still the 24th in New York; 05:00 is the 25th.
        assert!(!christmas.excludes(at("2026-12-25T04:59:00Z")));
        assert!(christmas.excludes(at("2026-12-25T05:00:00Z")));
        assert!(christmas.excludes(at("2026-12-26T04:59:59Z")));
        assert!(!christmas.excludes(at("2026-12-26T05:00:00Z")));
    }

    #[test]
    fn a_pattern_excludes_the_instants_it_matches() {
        let weekends = exclusions(
            &["0 * * * sat,sun", "cron(30 9 ? * MON *)"],
            "Europe/Berlin",
        );
        // Saturday 2026-12-05, 10:00 in Berlin (09:00 UTC).
        assert!(weekends.excludes(at("2026-12-05T09:00:00Z")));
        assert!(!weekends.excludes(at("2026-12-05T09:00:01Z")));
        assert!(!weekends.excludes(at("2026-12-04T09:00:00Z")));
        // Monday 09:30 in Berlin.
        assert!(weekends.excludes(at("2026-12-07T08:30:00Z")));
    }

    #[test]
    fn what_is_not_a_day_or_a_pattern_is_refused_by_its_place() {
        let tz = parse_time_zone("UTC", "tz").unwrap();
        for bad in [
            "2026-13-01",
            "rate(5 minutes)",
            "2026-12-25T10:00:00Z",
            "tuesdays",
        ] {
            let items = vec!["2026-12-25".to_string(), bad.to_string()];
            let err = Exclusions::parse(&items, tz, "policies.exclude").unwrap_err();
            assert_eq!(err.field.as_deref(), Some("policies.exclude[1]"), "{bad}");
        }
        let many = vec!["2026-12-25".to_string(); MAX_EXCLUSIONS + 1];
        assert!(Exclusions::parse(&many, tz, "policies.exclude").is_err());
    }
}
