//! Energy per interval from a cumulative `energy` register (CONTRACT.md §7): readings in `ts`
//! order in, one [`Interval`] (or nothing: absent) per pair of consecutive boundaries out.
//!
//! The definition goes through an *accumulated* register `C`: 0 at the first reading, and each
//! reading adds the [`Step`] from the previous one (a rise, a glitch, a rollover or a reset). `C`
//! between two readings is interpolated linearly in time, and an interval's energy is
//! `C(end) − C(start)`. [`Accumulator`] folds the readings one at a time, so a caller can stream
//! them from the database: what it holds grows with the number of intervals, not of readings.
//!
//! Boundaries are the caller's: [`aligned`] makes the UTC-aligned ones of `15m` and `1h`; `1d`
//! needs local midnights in the site's time zone, which the database (it has the tz database)
//! computes and [`within`] trims to the window. So this module needs no time-zone data.

use chrono::{DateTime, TimeDelta, Utc};

use crate::model::Quality;

/// Below this fraction of the previous value, a fall is a glitch (a read as `a`), not a reset.
pub const GLITCH_FRACTION: f64 = 0.01;
/// A fall from at least this fraction of `register_max` is a rollover.
pub const ROLLOVER_FRACTION: f64 = 0.99;

/// The interval widths of `GET …/intervals?period=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// 15 minutes, aligned in UTC (the EU imbalance settlement period).
    Min15,
    /// One hour, aligned in UTC.
    Hour,
    /// Midnight to midnight in the site's time zone (23 or 25 hours on a daylight-saving day).
    Day,
}

impl Period {
    pub const ALL: [Period; 3] = [Self::Min15, Self::Hour, Self::Day];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Min15 => "15m",
            Self::Hour => "1h",
            Self::Day => "1d",
        }
    }

    /// The width of a UTC-aligned period; `None` for `1d`, whose length depends on the zone.
    pub fn fixed(self) -> Option<TimeDelta> {
        match self {
            Self::Min15 => Some(TimeDelta::minutes(15)),
            Self::Hour => Some(TimeDelta::hours(1)),
            Self::Day => None,
        }
    }
}

/// The widest gap between the two readings around a boundary for its value to be `good`:
/// twice the meter's `reading_frequency`, 48 h for `daily`. `None` for an unknown label.
pub fn max_gap(reading_frequency: &str) -> Option<TimeDelta> {
    Some(match reading_frequency {
        "1min" => TimeDelta::minutes(2),
        "5min" => TimeDelta::minutes(10),
        "15min" => TimeDelta::minutes(30),
        "hourly" => TimeDelta::hours(2),
        "daily" => TimeDelta::hours(48),
        _ => return None,
    })
}

/// More intervals than a request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooMany {
    pub intervals: i64,
    pub max: usize,
}

impl std::fmt::Display for TooMany {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the window holds {} intervals, more than {}: shorten it or use a longer period",
            self.intervals, self.max
        )
    }
}

impl std::error::Error for TooMany {}

/// The boundaries of the intervals of width `step`, aligned on the Unix epoch, whose start lies
/// in `[from, to)`: their starts and the end of the last one (empty when none starts there).
/// Counted before anything is allocated, so a window of centuries costs nothing.
pub fn aligned(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step: TimeDelta,
    max: usize,
) -> Result<Vec<DateTime<Utc>>, TooMany> {
    let step_us = step.num_microseconds().unwrap_or(i64::MAX).max(1);
    let (from_us, to_us) = (from.timestamp_micros(), to.timestamp_micros());
    // The first aligned instant at or after `from` (div_euclid: before 1970 too).
    let first = from_us.div_euclid(step_us) * step_us
        + if from_us.rem_euclid(step_us) == 0 {
            0
        } else {
            step_us
        };
    if first >= to_us {
        return Ok(Vec::new());
    }
    let intervals = (to_us - 1 - first) / step_us + 1;
    if intervals > max as i64 {
        return Err(TooMany { intervals, max });
    }
    Ok((0..=intervals)
        .filter_map(|i| DateTime::from_timestamp_micros(first + i * step_us))
        .collect())
}

/// Of `candidates` (increasing instants, e.g. the local midnights around a window), those in
/// `[from, to)` and the first one at or after `to`: the boundaries of the intervals that start
/// in the window. Empty unless at least one interval is complete.
pub fn within(
    candidates: impl IntoIterator<Item = DateTime<Utc>>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    for b in candidates.into_iter().filter(|b| *b >= from) {
        out.push(b);
        if b >= to {
            break;
        }
    }
    // Only starts, and no end after them: no complete interval.
    if out.last().is_none_or(|last| *last < to) || out.len() < 2 {
        out.clear();
    }
    out
}

/// One reading of the register.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub ts: DateTime<Utc>,
    pub value: f64,
    pub quality: Quality,
}

/// What a reading adds to the accumulated register, from the previous value `a` to it `b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// `b ≥ a`: `b − a`.
    Rise(f64),
    /// A fall of less than 1% of `a`: 0, and `b` is read as `a`.
    Glitch,
    /// `a ≥ 0.99 × register_max`: `register_max − a + b`.
    Rollover(f64),
    /// Any other fall: the register restarted from 0, `b`.
    Reset(f64),
}

impl Step {
    /// The step from the (effective) previous value `a` to `b`.
    pub fn between(a: f64, b: f64, register_max: Option<f64>) -> Step {
        if b >= a {
            return Step::Rise(b - a);
        }
        if a - b < GLITCH_FRACTION * a {
            return Step::Glitch;
        }
        if let Some(max) = register_max
            && a >= ROLLOVER_FRACTION * max
        {
            // Never negative, even for a value above register_max (a misconfigured maximum).
            return Step::Rollover((max - a + b).max(0.0));
        }
        // A register restarted from 0 cannot hold a negative value; a negative one adds nothing
        // rather than taking energy away.
        Step::Reset(b.max(0.0))
    }

    pub fn energy(self) -> f64 {
        match self {
            Step::Rise(d) | Step::Rollover(d) | Step::Reset(d) => d,
            Step::Glitch => 0.0,
        }
    }

    /// Glitches, rollovers and resets make the intervals they touch `estimated`.
    pub fn is_irregular(self) -> bool {
        !matches!(self, Step::Rise(_))
    }
}

/// The energy of one present interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// kWh: `C(end) − C(start)`, never negative.
    pub energy: f64,
    /// `Good` or `Estimated`.
    pub quality: Quality,
    /// Readings with `ts` in `[start, end)`.
    pub readings: u64,
}

/// The value of `C` at a boundary, and whether it came from good readings.
#[derive(Debug, Clone, Copy)]
struct Point {
    c: f64,
    good: bool,
}

/// The last reading folded in.
#[derive(Debug, Clone, Copy)]
struct Prev {
    ts: DateTime<Utc>,
    /// The value the next step counts from (after a glitch, the value before it).
    effective: f64,
    c: f64,
    good: bool,
    /// The first boundary after `ts`.
    next: usize,
}

/// Folds readings, in strictly increasing `ts`, into the intervals between `boundaries`.
#[derive(Debug)]
pub struct Accumulator {
    boundaries: Vec<DateTime<Utc>>,
    max_gap: TimeDelta,
    register_max: Option<f64>,
    points: Vec<Option<Point>>,
    /// Per interval: an irregular step overlaps it.
    irregular: Vec<bool>,
    readings: Vec<u64>,
    /// The first boundary not yet reached by a reading.
    next: usize,
    prev: Option<Prev>,
    /// Readings out of order (ignored): the caller's bug, counted so it can be seen.
    out_of_order: u64,
}

fn secs(d: TimeDelta) -> f64 {
    d.num_seconds() as f64 + f64::from(d.subsec_nanos()) * 1e-9
}

impl Accumulator {
    /// `boundaries` increasing (from [`aligned`] or [`within`]); `max_gap` from [`max_gap`];
    /// `register_max` the meter's `metadata.register_max`, when set (no rollover otherwise).
    pub fn new(
        boundaries: Vec<DateTime<Utc>>,
        max_gap: TimeDelta,
        register_max: Option<f64>,
    ) -> Self {
        let n = boundaries.len().saturating_sub(1);
        Self {
            points: vec![None; boundaries.len()],
            irregular: vec![false; n],
            readings: vec![0; n],
            boundaries,
            max_gap,
            register_max: register_max.filter(|m| m.is_finite() && *m > 0.0),
            next: 0,
            prev: None,
            out_of_order: 0,
        }
    }

    /// The number of intervals.
    pub fn len(&self) -> usize {
        self.readings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
    }

    /// Readings ignored because they did not come after the previous one.
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    pub fn push(&mut self, s: Sample) {
        if !s.value.is_finite() || self.prev.is_some_and(|p| s.ts <= p.ts) {
            self.out_of_order += 1;
            return;
        }
        let good = s.quality == Quality::Good;
        let (step, c, effective) = match self.prev {
            None => (None, 0.0, s.value),
            Some(p) => {
                let step = Step::between(p.effective, s.value, self.register_max);
                let effective = if step == Step::Glitch {
                    p.effective
                } else {
                    s.value
                };
                (Some(step), p.c + step.energy(), effective)
            }
        };
        // The boundaries this reading reaches: on it, or between the previous reading and it.
        while let Some(&b) = self.boundaries.get(self.next) {
            if b > s.ts {
                break;
            }
            self.points[self.next] = if b == s.ts {
                Some(Point { c, good })
            } else if let (Some(p), Some(step)) = (self.prev, step) {
                let fraction = secs(b - p.ts) / secs(s.ts - p.ts);
                Some(Point {
                    c: p.c + step.energy() * fraction,
                    good: p.good && good && s.ts - p.ts <= self.max_gap,
                })
            } else {
                // No reading at or before this boundary.
                None
            };
            self.next += 1;
        }
        // An irregular step is spread over (prev.ts, ts): every interval overlapping that span.
        if let (Some(p), Some(step)) = (self.prev, step)
            && step.is_irregular()
        {
            let mut i = p.next.saturating_sub(1);
            while i < self.irregular.len() && self.boundaries[i] < s.ts {
                self.irregular[i] = true;
                i += 1;
            }
        }
        if self.next >= 1
            && let Some(n) = self.readings.get_mut(self.next - 1)
        {
            *n += 1;
        }
        self.prev = Some(Prev {
            ts: s.ts,
            effective,
            c,
            good,
            next: self.next,
        });
    }

    /// One entry per interval: `None` where it is absent (no reading at or before its start, or
    /// none at or after its end).
    pub fn finish(self) -> Vec<Option<Interval>> {
        (0..self.len())
            .map(|i| {
                let (a, b) = (self.points[i]?, self.points[i + 1]?);
                let quality = if a.good && b.good && !self.irregular[i] {
                    Quality::Good
                } else {
                    Quality::Estimated
                };
                Some(Interval {
                    start: self.boundaries[i],
                    end: self.boundaries[i + 1],
                    // max: the rounding of an interpolation must not make -1e-13.
                    energy: (b.c - a.c).max(0.0),
                    quality,
                    readings: self.readings[i],
                })
            })
            .collect()
    }
}

/// The intervals of `readings` (in `ts` order) between `boundaries`, absent ones as `None`.
pub fn intervals(
    readings: impl IntoIterator<Item = Sample>,
    boundaries: Vec<DateTime<Utc>>,
    max_gap: TimeDelta,
    register_max: Option<f64>,
) -> Vec<Option<Interval>> {
    let mut acc = Accumulator::new(boundaries, max_gap, register_max);
    for s in readings {
        acc.push(s);
    }
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Quality::{Bad, Estimated as E, Good as G};

    /// 2026-01-01 00:00Z plus `m` minutes.
    fn t(m: f64) -> DateTime<Utc> {
        let base = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("instant")
            .with_timezone(&Utc);
        base + TimeDelta::milliseconds((m * 60_000.0).round() as i64)
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("instant")
            .with_timezone(&Utc)
    }

    /// Minutes, value, quality.
    type R = (f64, f64, Quality);
    /// Energy (compared rounded to 1e-9), quality, readings; `None`: absent.
    type Want = Option<(f64, Quality, u64)>;

    /// Name, readings, register_max, the intervals wanted.
    type Case<'a> = (&'a str, &'a [R], Option<f64>, &'a [Want]);

    /// Readings every `(minute, value, quality)`, 15-minute boundaries at the given minutes,
    /// a 15min meter (good gaps up to 30 min).
    fn check(name: &str, readings: &[R], bounds: &[f64], register_max: Option<f64>, want: &[Want]) {
        let samples = readings.iter().map(|&(m, value, quality)| Sample {
            ts: t(m),
            value,
            quality,
        });
        let got = intervals(
            samples,
            bounds.iter().map(|&m| t(m)).collect(),
            TimeDelta::minutes(30),
            register_max,
        );
        let round = |x: f64| (x * 1e9).round() / 1e9;
        let got: Vec<Want> = got
            .iter()
            .map(|i| i.map(|i| (round(i.energy), i.quality, i.readings)))
            .collect();
        let want: Vec<Want> = want
            .iter()
            .map(|w| w.map(|(e, q, n)| (round(e), q, n)))
            .collect();
        assert_eq!(got, want, "{name}");
    }

    #[test]
    fn interval_energy_follows_contract_section_7() {
        let b = [0.0, 15.0, 30.0, 45.0];
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("readings on every boundary",
             &[(0.0, 100.0, G), (15.0, 101.0, G), (30.0, 103.0, G), (45.0, 106.0, G)], None,
             &[Some((1.0, G, 1)), Some((2.0, G, 1)), Some((3.0, G, 1))]),
            ("readings between boundaries: interpolated, the rise spread evenly",
             // 10 kWh from -5 to 10 (15 min): 5/15 of it before 0, 10/15 after.
             &[(-5.0, 100.0, G), (10.0, 110.0, G), (25.0, 113.0, G), (40.0, 116.0, G), (50.0, 118.0, G)], None,
             &[Some((11.0 - 10.0 / 3.0, G, 1)), Some((3.0, G, 1)), Some((3.0, G, 1))]),
            ("a reading exactly on the end counts for the next interval",
             &[(0.0, 1.0, G), (15.0, 2.0, G), (30.0, 3.0, G)], None,
             &[Some((1.0, G, 1)), Some((1.0, G, 1)), None]),
            ("glitch: 215.7, 215.6, 215.9 gives 0, then 0.2",
             &[(0.0, 215.7, G), (15.0, 215.6, G), (30.0, 215.9, G), (45.0, 216.0, G)], None,
             &[Some((0.0, E, 1)), Some((0.2, G, 1)), Some((0.1, G, 1))]),
            ("reset (a meter exchange): the new register's value is the step",
             &[(0.0, 5000.0, G), (15.0, 5010.0, G), (30.0, 3.0, G), (45.0, 5.0, G)], None,
             &[Some((10.0, G, 1)), Some((3.0, E, 1)), Some((2.0, G, 1))]),
            ("reset between boundaries: both intervals it spreads over are estimated",
             &[(0.0, 5000.0, G), (10.0, 5010.0, G), (20.0, 1.0, G), (45.0, 6.0, G)], None,
             &[Some((10.0 + 0.5, E, 2)), Some((0.5 + 2.0, E, 1)), Some((3.0, G, 0))]),
            ("rollover at register_max",
             &[(0.0, 99_990.0, G), (15.0, 99_998.0, G), (30.0, 4.0, G), (45.0, 9.0, G)], Some(100_000.0),
             &[Some((8.0, G, 1)), Some((6.0, E, 1)), Some((5.0, G, 1))]),
            ("without register_max the same fall is a reset",
             &[(0.0, 99_990.0, G), (15.0, 99_998.0, G), (30.0, 4.0, G), (45.0, 9.0, G)], None,
             &[Some((8.0, G, 1)), Some((4.0, E, 1)), Some((5.0, G, 1))]),
            ("a fall far below 0.99 × register_max is a reset, not a rollover",
             &[(0.0, 500.0, G), (15.0, 510.0, G), (30.0, 4.0, G), (45.0, 9.0, G)], Some(100_000.0),
             &[Some((10.0, G, 1)), Some((4.0, E, 1)), Some((5.0, G, 1))]),
            ("gap longer than twice the frequency around a boundary: estimated",
             &[(0.0, 10.0, G), (5.0, 11.0, G), (40.0, 18.0, G), (45.0, 19.0, G)], None,
             // 7 kWh over 35 min: 10/35 of it in [5, 15), 15/35 in [15, 30), 10/35 in [30, 40).
             &[Some((1.0 + 2.0, E, 2)), Some((3.0, E, 0)), Some((2.0 + 1.0, E, 1))]),
            ("no reading at or before the start, none at or after the end: absent",
             &[(5.0, 10.0, G), (20.0, 12.0, G), (35.0, 13.0, G)], None,
             &[None, Some((4.0 / 3.0, G, 1)), None]),
            ("no readings: every interval absent",
             &[], None, &[None, None, None]),
            ("bad quality on a boundary reading: estimated",
             &[(0.0, 1.0, G), (15.0, 2.0, Bad), (30.0, 3.0, G), (45.0, 4.0, G)], None,
             &[Some((1.0, E, 1)), Some((1.0, E, 1)), Some((1.0, G, 1))]),
            ("an estimated reading next to an interpolated boundary: estimated",
             &[(0.0, 1.0, G), (10.0, 2.0, G), (20.0, 3.0, E), (30.0, 4.0, G), (45.0, 5.0, G)], None,
             &[Some((1.5, E, 2)), Some((1.5, E, 1)), Some((1.0, G, 1))]),
        ];
        for (name, readings, max, want) in cases {
            check(name, readings, &b, *max, want);
        }
    }

    #[test]
    fn steps_are_classified_as_contract_section_7_says() {
        let max = Some(1000.0);
        for (a, b, max, want) in [
            (10.0, 12.0, None, Step::Rise(2.0)),
            (10.0, 10.0, None, Step::Rise(0.0)),
            (215.7, 215.6, None, Step::Glitch),
            (100.0, 99.0, None, Step::Reset(99.0)), // exactly 1%: not less than 1%
            (995.0, 3.0, max, Step::Rollover(8.0)),
            (990.0, 3.0, max, Step::Rollover(13.0)),
            (989.0, 3.0, max, Step::Reset(3.0)),
            (999.0, 998.0, max, Step::Glitch), // a small fall near the top is a glitch
            (1200.0, 3.0, max, Step::Rollover(0.0)), // above register_max: never negative
            (5.0, -2.0, None, Step::Reset(0.0)),
        ] {
            let got = Step::between(a, b, max);
            match (got, want) {
                (Step::Rise(x), Step::Rise(y))
                | (Step::Rollover(x), Step::Rollover(y))
                | (Step::Reset(x), Step::Reset(y)) => {
                    assert!((x - y).abs() < 1e-9, "{a} → {b}: {got:?}, want {want:?}")
                }
                _ => assert_eq!(got, want, "{a} → {b}"),
            }
        }
    }

    #[test]
    fn a_glitch_is_read_as_the_value_before_it() {
        // 215.7, 215.6, 215.65, 215.9: both dips count from 215.7; then 0.2.
        let got = intervals(
            [(0.0, 215.7), (15.0, 215.6), (30.0, 215.65), (45.0, 215.9)].map(|(m, v)| Sample {
                ts: t(m),
                value: v,
                quality: G,
            }),
            vec![t(0.0), t(30.0), t(45.0)],
            TimeDelta::minutes(30),
            None,
        );
        let energies: Vec<f64> = got.iter().flatten().map(|i| i.energy).collect();
        assert_eq!(energies.len(), 2);
        assert!(energies[0].abs() < 1e-9, "{energies:?}");
        assert!((energies[1] - 0.2).abs() < 1e-9, "{energies:?}");
    }

    #[test]
    fn aligned_boundaries_are_those_starting_in_the_window() {
        let q = TimeDelta::minutes(15);
        let got = aligned(t(0.0), t(45.0), q, 10).expect("few");
        assert_eq!(got, vec![t(0.0), t(15.0), t(30.0), t(45.0)]);
        // A start inside the window, its end past `to`.
        let got = aligned(t(7.0), t(31.0), q, 10).expect("few");
        assert_eq!(got, vec![t(15.0), t(30.0), t(45.0)]);
        assert!(aligned(t(1.0), t(14.0), q, 10).expect("none").is_empty());
        let got = aligned(t(-20.0), t(-10.0), q, 10).expect("before the base");
        assert_eq!(got, vec![t(-15.0), t(0.0)]);
        assert_eq!(
            aligned(t(0.0), t(15.0 * 11.0), q, 10),
            Err(TooMany {
                intervals: 11,
                max: 10
            })
        );
        let far = aligned(
            at("0001-01-01T00:00:00Z"),
            at("9999-01-01T00:00:00Z"),
            q,
            10,
        );
        assert!(far.is_err());
    }

    #[test]
    fn local_days_of_23_and_25_hours_are_one_interval_each() {
        // Europe/Brussels midnights around the 2026 changes (as PostgreSQL gives them):
        // 29 March is 23 h (CET → CEST), 25 October 25 h (CEST → CET).
        let spring = [
            at("2026-03-27T23:00:00Z"),
            at("2026-03-28T23:00:00Z"),
            at("2026-03-29T22:00:00Z"),
            at("2026-03-30T22:00:00Z"),
        ];
        let days = within(
            spring,
            at("2026-03-28T12:00:00Z"),
            at("2026-03-29T23:00:00Z"),
        );
        assert_eq!(days, spring[1..].to_vec());
        // Hourly readings rising 1 kWh an hour: the short day has 23, the next one 24.
        let hourly = |from: &str, hours: i64| {
            let from = at(from);
            (0..hours).map(move |h| Sample {
                ts: from + TimeDelta::hours(h),
                value: h as f64,
                quality: G,
            })
        };
        let got = intervals(
            hourly("2026-03-28T20:00:00Z", 60),
            days,
            TimeDelta::hours(2),
            None,
        );
        let got: Vec<(f64, u64)> = got
            .iter()
            .flatten()
            .map(|i| (i.energy, i.readings))
            .collect();
        assert_eq!(got, vec![(23.0, 23), (24.0, 24)]);

        let autumn = [at("2026-10-24T22:00:00Z"), at("2026-10-25T23:00:00Z")];
        let days = within(
            autumn,
            at("2026-10-24T22:00:00Z"),
            at("2026-10-25T00:00:00Z"),
        );
        let got = intervals(
            hourly("2026-10-24T21:00:00Z", 30),
            days,
            TimeDelta::hours(2),
            None,
        );
        let got: Vec<(f64, Quality, u64)> = got
            .iter()
            .flatten()
            .map(|i| (i.energy, i.quality, i.readings))
            .collect();
        assert_eq!(got, vec![(25.0, G, 25)]);
        // A window that holds no complete interval's start.
        assert!(
            within(
                spring,
                at("2026-03-28T23:00:01Z"),
                at("2026-03-29T12:00:00Z")
            )
            .is_empty()
        );
    }

    #[test]
    fn readings_out_of_order_are_ignored_and_counted() {
        let mut acc = Accumulator::new(vec![t(0.0), t(15.0)], TimeDelta::minutes(30), None);
        for (m, v) in [
            (0.0, 1.0),
            (10.0, 2.0),
            (5.0, 9.0),
            (10.0, 3.0),
            (15.0, 4.0),
        ] {
            acc.push(Sample {
                ts: t(m),
                value: v,
                quality: G,
            });
        }
        assert_eq!(acc.out_of_order(), 2);
        let got = acc.finish();
        assert_eq!(got[0].map(|i| i.energy), Some(3.0));
    }

    #[test]
    fn periods_and_frequencies_parse() {
        for p in Period::ALL {
            assert_eq!(Period::parse(p.as_str()), Some(p));
        }
        assert_eq!(Period::parse("15min"), None);
        assert_eq!(max_gap("daily"), Some(TimeDelta::hours(48)));
        assert_eq!(max_gap("1min"), Some(TimeDelta::minutes(2)));
        assert_eq!(max_gap("weekly"), None);
    }
}
