//! Corrections (CONTRACT.md §4): which reading a key `(entity_type, entity_id, metric, ts)`
//! ends up holding when several arrive for it, and what becomes of the others.
//!
//! Pure: the writer fetches the stored versions of a chunk's keys, [`settle`]s each key here,
//! and writes the outcome set-based. Keeping the rule out of SQL keeps it in one place, tested
//! by tables of cases and a property test.

use serde::{Deserialize, Serialize};

use crate::model::Quality;

/// `ingest.corrections`: how a different reading for a key that holds one is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Strictly better quality replaces; otherwise the same value is a duplicate and a
    /// different one is superseded.
    #[default]
    Quality,
    /// The first reading stays; every different later one is superseded.
    First,
    /// Any different reading of equal or better quality replaces the stored one.
    Latest,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quality => "quality",
            Self::First => "first",
            Self::Latest => "latest",
        }
    }
}

/// `good` > `estimated` > `bad`.
pub fn rank(q: Quality) -> u8 {
    match q {
        Quality::Good => 2,
        Quality::Estimated => 1,
        Quality::Bad => 0,
    }
}

/// What a reading's value and quality are, in the canonical unit (the unit follows the metric).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Version {
    pub value: f64,
    pub quality: Quality,
}

/// What happens to a new reading for a key that holds `stored`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It becomes the stored reading; the one it replaces is kept as a revision.
    Replaces,
    /// Nothing changes.
    Duplicate,
    /// Not applied: recorded as a rejection (`superseded`).
    Superseded,
}

/// The rule of CONTRACT.md §4 for one new reading against the stored one. Values compare
/// exactly: both are the same conversion of what the gateway sent.
pub fn judge(policy: Policy, stored: Version, new: Version) -> Outcome {
    let same_value = new.value == stored.value;
    if same_value && new.quality == stored.quality {
        return Outcome::Duplicate;
    }
    let better = rank(new.quality) > rank(stored.quality);
    let not_worse = rank(new.quality) >= rank(stored.quality);
    match policy {
        Policy::Quality if better => Outcome::Replaces,
        Policy::Latest if not_worse => Outcome::Replaces,
        Policy::First => Outcome::Superseded,
        _ if same_value => Outcome::Duplicate,
        _ => Outcome::Superseded,
    }
}

/// Which version a replaced one was: the row the database held, or one of the new readings
/// (by its position in the input) that was stored and replaced in the same batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    Stored,
    New(usize),
}

/// How one key's readings were decided.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settled {
    /// The reading the key holds afterwards, when it is a new one (`None`: the stored one
    /// stays, or there was nothing).
    pub last: Option<usize>,
    /// The versions replaced, in order (each becomes a revision).
    pub replaced: Vec<Replaced>,
    /// New readings that changed nothing.
    pub duplicates: Vec<usize>,
    /// New readings not applied, each with the version the key held when it came.
    pub superseded: Vec<(usize, Version)>,
}

impl Settled {
    /// Readings that became the stored version at some point (the first of a new key, and
    /// every replacement).
    pub fn accepted(&self, had_stored: bool) -> usize {
        self.replaced.len() + usize::from(!had_stored && self.last.is_some())
    }
}

/// Decides a key's new readings (`(position, version)`, in arrival order) one after the other
/// against what it holds, starting from `stored` (`None`: the key is new, and its first reading
/// is simply stored).
pub fn settle(
    policy: Policy,
    stored: Option<Version>,
    readings: impl IntoIterator<Item = (usize, Version)>,
) -> Settled {
    let mut settled = Settled::default();
    let mut held = stored;
    for (i, new) in readings {
        let Some(current) = held else {
            held = Some(new);
            settled.last = Some(i);
            continue;
        };
        match judge(policy, current, new) {
            Outcome::Replaces => {
                settled
                    .replaced
                    .push(settled.last.map_or(Replaced::Stored, Replaced::New));
                held = Some(new);
                settled.last = Some(i);
            }
            Outcome::Duplicate => settled.duplicates.push(i),
            Outcome::Superseded => settled.superseded.push((i, current)),
        }
    }
    settled
}

#[cfg(test)]
mod tests {
    use super::*;
    use Quality::{Bad, Estimated as Est, Good};

    fn v(value: f64, quality: Quality) -> Version {
        Version { value, quality }
    }

    /// CONTRACT.md §4's outcome table, for each policy: (stored, new, quality, first, latest).
    #[test]
    fn the_outcome_table() {
        use Outcome::{Duplicate as D, Replaces as R, Superseded as S};
        let cases = [
            // Strictly better quality, same or different value.
            (v(100.0, Est), v(100.0, Good), R, S, R),
            (v(100.0, Est), v(104.2, Good), R, S, R),
            (v(100.0, Bad), v(101.0, Est), R, S, R),
            // Same value and quality: a duplicate everywhere.
            (v(100.0, Good), v(100.0, Good), D, D, D),
            (v(100.0, Bad), v(100.0, Bad), D, D, D),
            // Equal quality, different value.
            (v(100.0, Good), v(104.2, Good), S, S, R),
            (v(100.0, Est), v(99.0, Est), S, S, R),
            // Worse quality: same value a duplicate, different superseded (latest too).
            (v(104.2, Good), v(104.2, Est), D, S, D),
            (v(104.2, Good), v(100.0, Est), S, S, S),
            (v(100.0, Est), v(90.0, Bad), S, S, S),
        ];
        for (stored, new, quality, first, latest) in cases {
            assert_eq!(
                judge(Policy::Quality, stored, new),
                quality,
                "{stored:?} {new:?}"
            );
            assert_eq!(
                judge(Policy::First, stored, new),
                first,
                "{stored:?} {new:?}"
            );
            assert_eq!(
                judge(Policy::Latest, stored, new),
                latest,
                "{stored:?} {new:?}"
            );
        }
    }

    #[test]
    fn a_new_key_takes_its_first_reading_and_folds_the_rest_onto_it() {
        let s = settle(
            Policy::Quality,
            None,
            [
                (0, v(1.0, Bad)),
                (1, v(2.0, Est)),
                (2, v(2.0, Est)),
                (3, v(3.0, Est)),
                (4, v(4.0, Good)),
            ],
        );
        assert_eq!(s.last, Some(4));
        assert_eq!(s.replaced, vec![Replaced::New(0), Replaced::New(1)]);
        assert_eq!(s.duplicates, vec![2]);
        assert_eq!(s.superseded, vec![(3, v(2.0, Est))]);
        assert_eq!(s.accepted(false), 3);
    }

    #[test]
    fn a_stored_key_is_replaced_once_and_redelivery_is_a_duplicate() {
        let s = settle(
            Policy::Quality,
            Some(v(100.0, Est)),
            [(7, v(104.2, Good)), (9, v(104.2, Good))],
        );
        assert_eq!(s.last, Some(7));
        assert_eq!(s.replaced, vec![Replaced::Stored]);
        assert_eq!(s.duplicates, vec![9]);
        assert_eq!(s.accepted(true), 1);
        let again = settle(Policy::Quality, Some(v(104.2, Good)), [(0, v(104.2, Good))]);
        assert_eq!(again.last, None);
        assert!(again.replaced.is_empty());
        assert_eq!(again.duplicates, vec![0]);
    }

    #[test]
    fn first_keeps_the_stored_reading_and_names_it() {
        let s = settle(
            Policy::First,
            Some(v(100.0, Est)),
            [(0, v(104.2, Good)), (1, v(100.0, Est))],
        );
        assert_eq!(s.last, None);
        assert_eq!(s.superseded, vec![(0, v(100.0, Est))]);
        assert_eq!(s.duplicates, vec![1]);
    }
}
