//! What `provision` reports: the plan of what it did (or would do) entity by entity, and the
//! problems it refuses a file with.

use std::collections::BTreeMap;
use std::fmt;

/// What provisioning did (or, in a dry run, would have done), entity by entity.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Nothing was written: the transaction was rolled back.
    pub dry_run: bool,
    /// One entry per entity the file names, grouped by kind, in file order (assets parents
    /// first).
    pub entries: Vec<Entry>,
    /// Per kind, the rows in the file's scope that the file does not name, left as they are:
    /// other portfolios; sites of the file's portfolios; meters and grid links of the file's
    /// sites; assets and energy sources of the file's meters; connections touching the file's
    /// assets.
    pub left: BTreeMap<Kind, Vec<String>>,
}

/// The kinds of entity a file can hold, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Portfolio,
    Site,
    Meter,
    Asset,
    EnergySource,
    GridLink,
    AssetConnection,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Portfolio,
        Kind::Site,
        Kind::Meter,
        Kind::Asset,
        Kind::EnergySource,
        Kind::GridLink,
        Kind::AssetConnection,
    ];

    pub fn plural(self) -> &'static str {
        match self {
            Kind::Portfolio => "portfolios",
            Kind::Site => "sites",
            Kind::Meter => "meters",
            Kind::Asset => "assets",
            Kind::EnergySource => "energy sources",
            Kind::GridLink => "grid links",
            Kind::AssetConnection => "asset connections",
        }
    }

    /// What a row of this kind is moved between, when it can be.
    pub(super) fn parent_noun(self) -> &'static str {
        match self {
            Kind::Meter => "site",
            Kind::Asset | Kind::EnergySource => "meter",
            _ => "parent",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    /// Some columns changed; [`Entry::fields`] says which.
    Updated,
    /// Found under another parent and moved under the file's; maybe other columns changed too.
    Moved,
    Unchanged,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Moved => "moved",
            Action::Unchanged => "unchanged",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    pub action: Action,
    /// How the file names it: `Portfolio`, `Portfolio / Site`, `external_id (name)`,
    /// `Site / link`, `source → target (relationship)`.
    pub name: String,
    /// The file keys whose values changed (Updated, Moved); the parent itself is not listed.
    pub fields: Vec<&'static str>,
    /// Moved: the parent it was under (a site's name, a meter's external id).
    pub moved_from: Option<String>,
}

impl Plan {
    /// How many entities of `kind` got `action`.
    pub fn count(&self, kind: Kind, action: Action) -> usize {
        self.entries
            .iter()
            .filter(|e| e.kind == kind && e.action == action)
            .count()
    }

    /// How many rows were (or would be) written: created, updated and moved.
    pub fn changes(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.action != Action::Unchanged)
            .count()
    }

    /// The rows of `kind` in the file's scope that the file does not name.
    pub fn left(&self, kind: Kind) -> &[String] {
        self.left.get(&kind).map_or(&[], Vec::as_slice)
    }

    pub(super) fn push(&mut self, kind: Kind, name: String, outcome: Outcome) {
        let (action, fields, moved_from) = match outcome {
            Outcome::Created => (Action::Created, Vec::new(), None),
            Outcome::Unchanged => (Action::Unchanged, Vec::new(), None),
            Outcome::Changed {
                fields,
                moved_from: None,
            } => (Action::Updated, fields, None),
            Outcome::Changed {
                fields,
                moved_from: Some(from),
            } => (Action::Moved, fields, Some(from)),
        };
        self.entries.push(Entry {
            kind,
            action,
            name,
            fields,
            moved_from,
        });
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all = [
            Action::Created,
            Action::Updated,
            Action::Moved,
            Action::Unchanged,
        ];
        for kind in Kind::ALL {
            let counts: Vec<String> = all
                .iter()
                .map(|a| format!("{} {a}", self.count(kind, *a)))
                .collect();
            let left = self.left(kind);
            writeln!(
                f,
                "{}: {}, {} left",
                kind.plural(),
                counts.join(", "),
                left.len()
            )?;
            for e in self.entries.iter().filter(|e| e.kind == kind) {
                write!(f, "  {:<10} {}", e.action.to_string(), e.name)?;
                if let Some(from) = &e.moved_from {
                    write!(f, " (from {} {from:?})", kind.parent_noun())?;
                }
                if !e.fields.is_empty() {
                    write!(f, ": {}", e.fields.join(", "))?;
                }
                writeln!(f)?;
            }
            for name in left {
                writeln!(
                    f,
                    "  {:<10} {name} (not in the file; left as it is)",
                    "left"
                )?;
            }
        }
        let total = |a| self.entries.iter().filter(|e| e.action == a).count();
        write!(
            f,
            "total: {} created, {} updated, {} moved, {} unchanged, {} left",
            total(Action::Created),
            total(Action::Updated),
            total(Action::Moved),
            total(Action::Unchanged),
            self.left.values().map(Vec::len).sum::<usize>()
        )?;
        if self.dry_run {
            write!(f, "\ndry run: nothing was written (rolled back)")?;
        }
        Ok(())
    }
}

/// One thing wrong with the inventory, at a path such as `portfolios[0].sites[1].name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, in the file's own terms; empty for the file as a whole.
    pub path: String,
    pub message: String,
}

impl Problem {
    pub(super) fn new(path: &str, message: impl Into<String>) -> Self {
        Self {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "(top level): {}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The inventory was refused: every problem found, nothing written.
#[derive(Debug, thiserror::Error)]
pub struct Invalid {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl Invalid {
    /// Sorts the problems into file order (stable: a field's problems keep theirs).
    pub(super) fn new(file: String, mut problems: Vec<Problem>) -> Self {
        problems.sort_by_cached_key(|p| file_order(&p.path));
        Self { file, problems }
    }
}

/// A key that orders paths as they appear in the file: `meters[2]` before `meters[10]`.
fn file_order(path: &str) -> String {
    let mut key = String::with_capacity(path.len() + 16);
    let mut digits = String::new();
    for c in path.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if !digits.is_empty() {
            key.push_str(&format!("{digits:0>10}"));
            digits.clear();
        }
        key.push(c);
    }
    key.push_str(&digits);
    key
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        let s = if n == 1 { "" } else { "s" };
        write!(f, "{}: {n} problem{s}, nothing was written", self.file)?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// What one upsert did, for the plan.
pub(super) enum Outcome {
    Created,
    Unchanged,
    Changed {
        fields: Vec<&'static str>,
        moved_from: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_come_in_file_order() {
        let mut paths = vec!["a[10].x", "a[2].y", "", "a[2].b[1]", "a[2]"];
        paths.sort_by_key(|p| file_order(p));
        assert_eq!(paths, ["", "a[2]", "a[2].b[1]", "a[2].y", "a[10].x"]);
    }
}
