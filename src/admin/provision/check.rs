//! The checks of an inventory before anything is written: across the file (unique keys, no
//! self-links), and against the database inside the transaction that will write (asset types,
//! time zones, referenced assets, parent cycles through rows the file does not name). Values
//! were already checked against their columns when the file was read ([`super::file`]).

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::file::{Inventory, join};
use super::pg;
use super::plan::Problem;

/// Records `key` at `path`; reports it when an earlier entry already had it. Empty keys were
/// reported when decoded and are skipped here.
fn unique<'a>(
    seen: &mut HashMap<String, &'a str>,
    key: String,
    path: &'a str,
    field: &str,
    what: &str,
    problems: &mut Vec<Problem>,
) {
    if key.is_empty() {
        return;
    }
    if let Some(first) = seen.get(&key) {
        problems.push(Problem::new(
            &join(path, field),
            format!("duplicate {what} (first at {first})"),
        ));
    } else {
        seen.insert(key, path);
    }
}

pub(super) fn check_file(inv: &Inventory, problems: &mut Vec<Problem>) {
    let mut portfolios = HashMap::new();
    for p in &inv.portfolios {
        let what = format!("portfolio name {:?}", p.name);
        unique(
            &mut portfolios,
            p.name.clone(),
            &p.path,
            "name",
            &what,
            problems,
        );
    }
    let mut sites = HashMap::new();
    for (p, s) in inv.sites() {
        let what = format!("site name {:?} in portfolio {:?}", s.name, p.name);
        let key = if s.name.is_empty() {
            String::new()
        } else {
            format!("{}\0{}", p.name, s.name)
        };
        unique(&mut sites, key, &s.path, "name", &what, problems);
    }
    let mut links = HashMap::new();
    for (s, g) in inv.grid_links() {
        let what = format!("grid link name {:?} in site {:?}", g.name, s.name);
        let key = if g.name.is_empty() {
            String::new()
        } else {
            format!("{}\0{}\0{}", s.path, s.name, g.name)
        };
        unique(&mut links, key, &g.path, "name", &what, problems);
    }
    let mut meters = HashMap::new();
    for (_, m) in inv.meters() {
        let what = format!("meter external_id {:?}", m.external_id);
        unique(
            &mut meters,
            m.external_id.clone(),
            &m.path,
            "external_id",
            &what,
            problems,
        );
    }
    let mut sources = HashMap::new();
    for (_, e) in inv.energy_sources() {
        let what = format!("energy source external_id {:?}", e.external_id);
        unique(
            &mut sources,
            e.external_id.clone(),
            &e.path,
            "external_id",
            &what,
            problems,
        );
    }
    let mut assets = HashMap::new();
    for (_, a) in inv.assets() {
        let what = format!("asset external_id {:?}", a.external_id);
        unique(
            &mut assets,
            a.external_id.clone(),
            &a.path,
            "external_id",
            &what,
            problems,
        );
        if let Some(parent) = &a.parent {
            if parent.trim().is_empty() {
                problems.push(Problem::new(&join(&a.path, "parent"), "must not be empty"));
            } else if *parent == a.external_id {
                problems.push(Problem::new(
                    &join(&a.path, "parent"),
                    "an asset cannot be its own parent",
                ));
            }
        }
        if a.asset_type.as_deref().is_some_and(|t| t.trim().is_empty()) {
            problems.push(Problem::new(
                &join(&a.path, "asset_type"),
                "must not be empty",
            ));
        }
    }
    let mut connections = HashMap::new();
    for c in inv.connections() {
        if !c.source.is_empty() && c.source == c.target {
            problems.push(Problem::new(
                &join(&c.path, "target"),
                format!("an asset cannot be connected to itself ({:?})", c.source),
            ));
        }
        let key = if c.source.is_empty() || c.target.is_empty() || c.relationship.is_empty() {
            String::new()
        } else {
            format!("{}\0{}\0{}", c.source, c.target, c.relationship)
        };
        let what = format!(
            "connection {} → {} ({})",
            c.source, c.target, c.relationship
        );
        unique(&mut connections, key, &c.path, "source", &what, problems);
    }
}

/// The asset parent links as they would be after provisioning, by a key per asset (its
/// external id, or `id:<uuid>` for a database asset without one): file assets point where the
/// file says, the other database assets where they point now. Returns each cycle reached from
/// `starts`, once, as the keys around it from the first start on it.
fn cycles(graph: &HashMap<String, Option<String>>, starts: &[&str]) -> Vec<Vec<String>> {
    let mut found: Vec<Vec<String>> = Vec::new();
    let mut reported: HashSet<&str> = HashSet::new();
    for &start in starts {
        if reported.contains(start) {
            continue;
        }
        let mut chain = vec![start];
        let mut at = start;
        while let Some(Some(next)) = graph.get(at) {
            if next == start {
                found.push(chain.iter().map(|s| s.to_string()).collect());
                reported.extend(chain.iter().copied());
                break;
            }
            // A cycle further up that does not pass through `start`: its own members report it.
            if chain.contains(&next.as_str()) || chain.len() > graph.len() {
                break;
            }
            chain.push(next);
            at = next;
        }
    }
    found
}

/// What the checks looked up, for the writes.
pub(super) struct Known {
    pub(super) asset_types: HashMap<String, Uuid>,
    /// Assets the file refers to (as a parent, or at an end of a connection) without declaring
    /// them.
    pub(super) assets: HashMap<String, Uuid>,
}

pub(super) async fn check_database(
    tx: &Transaction<'_>,
    inv: &Inventory,
    problems: &mut Vec<Problem>,
) -> anyhow::Result<Known> {
    // Asset types: the reference table is small; load it whole to name the known codes.
    let rows = tx
        .query("SELECT code, id FROM asset_types ORDER BY code", &[])
        .await
        .map_err(pg)
        .context("cannot read asset_types")?;
    let asset_types: HashMap<String, Uuid> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (_, a) in inv.assets() {
        if let Some(code) = a.asset_type.as_deref().filter(|c| !c.trim().is_empty())
            && !asset_types.contains_key(code)
        {
            let mut codes: Vec<&str> = asset_types.keys().map(String::as_str).collect();
            codes.sort_unstable();
            let known = if codes.is_empty() {
                "none: has `enalysis-ingest seed` run?".to_string()
            } else {
                codes.join(", ")
            };
            problems.push(Problem::new(
                &join(&a.path, "asset_type"),
                format!("unknown asset type {code:?} (known: {known})"),
            ));
        }
    }

    // Time zones, as PostgreSQL knows them.
    let zones: Vec<&str> = {
        let mut z: Vec<&str> = inv
            .sites()
            .map(|(_, s)| s.timezone.as_str())
            .filter(|z| !z.is_empty())
            .collect();
        z.sort_unstable();
        z.dedup();
        z
    };
    // The rule of the sites' trigger (migrations/0008_site_time_zones.sql), for every zone at once.
    let rows = tx
        .query(
            "SELECT zone FROM unnest($1::text[]) AS zone WHERE NOT time_zone_is_known(zone)",
            &[&zones],
        )
        .await
        .map_err(pg)
        .context("cannot check the time zones")?;
    let unknown: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    for (_, s) in inv.sites() {
        if unknown.contains(&s.timezone) {
            problems.push(Problem::new(
                &join(&s.path, "timezone"),
                format!(
                    "unknown time zone {:?} (expected a name such as Europe/Brussels)",
                    s.timezone
                ),
            ));
        }
    }

    // Assets referred to but not declared must exist in the database.
    let in_file: HashSet<&str> = inv.assets().map(|(_, a)| a.external_id.as_str()).collect();
    let mut refs: Vec<(String, &str)> = Vec::new(); // (path, external id)
    for (_, a) in inv.assets() {
        if let Some(p) = a.parent.as_deref() {
            refs.push((join(&a.path, "parent"), p));
        }
    }
    for c in inv.connections() {
        refs.push((join(&c.path, "source"), &c.source));
        refs.push((join(&c.path, "target"), &c.target));
    }
    refs.retain(|(_, e)| !e.trim().is_empty() && !in_file.contains(e));
    let wanted: Vec<&str> = refs.iter().map(|(_, e)| *e).collect();
    let rows = tx
        .query(
            "SELECT external_id, id FROM assets WHERE external_id = ANY($1)",
            &[&wanted],
        )
        .await
        .map_err(pg)
        .context("cannot look up assets")?;
    let assets: HashMap<String, Uuid> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (path, e) in &refs {
        if !assets.contains_key(*e) {
            problems.push(Problem::new(
                path,
                format!("no asset with external_id {e:?} in the file or the database"),
            ));
        }
    }

    // Parent cycles through the database: the ancestors of the database parents the file names.
    let db_parents: Vec<Uuid> = inv
        .assets()
        .filter_map(|(_, a)| a.parent.as_deref())
        .filter_map(|p| assets.get(p).copied())
        .collect();
    let rows = tx
        .query(
            "WITH RECURSIVE up (id, external_id, parent_asset_id) AS (
                 SELECT id, external_id, parent_asset_id FROM assets WHERE id = ANY($1)
               UNION
                 SELECT a.id, a.external_id, a.parent_asset_id
                 FROM assets a JOIN up ON a.id = up.parent_asset_id
             )
             SELECT id, external_id, parent_asset_id FROM up",
            &[&db_parents],
        )
        .await
        .map_err(pg)
        .context("cannot read the asset hierarchy")?;
    let key_of_id: HashMap<Uuid, String> = rows
        .iter()
        .map(|r| {
            let id: Uuid = r.get(0);
            let ext: Option<String> = r.get(1);
            (id, ext.unwrap_or_else(|| format!("id:{id}")))
        })
        .collect();
    let mut graph: HashMap<String, Option<String>> = HashMap::new();
    for r in &rows {
        let id: Uuid = r.get(0);
        let parent: Option<Uuid> = r.get(2);
        let key = key_of_id[&id].clone();
        graph.insert(key, parent.and_then(|p| key_of_id.get(&p).cloned()));
    }
    let mut starts = Vec::new();
    let mut path_of: HashMap<&str, &str> = HashMap::new();
    for (_, a) in inv.assets() {
        if a.external_id.is_empty() {
            continue;
        }
        let parent = a
            .parent
            .clone()
            .filter(|p| *p != a.external_id && !p.trim().is_empty());
        graph.insert(a.external_id.clone(), parent);
        starts.push(a.external_id.as_str());
        path_of.entry(&a.external_id).or_insert(&a.path);
    }
    for cycle in cycles(&graph, &starts) {
        let path = path_of.get(cycle[0].as_str()).copied().unwrap_or("");
        let mut around = cycle.clone();
        around.push(cycle[0].clone());
        problems.push(Problem::new(
            &join(path, "parent"),
            format!("parents form a cycle: {}", around.join(" → ")),
        ));
    }

    Ok(Known {
        asset_types,
        assets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_found_once_each_whatever_the_start() {
        let graph = |edges: &[(&str, Option<&str>)]| -> HashMap<String, Option<String>> {
            edges
                .iter()
                .map(|(a, b)| (a.to_string(), b.map(str::to_string)))
                .collect()
        };
        let g = graph(&[
            ("a", Some("b")),
            ("b", Some("c")),
            ("c", Some("a")),
            ("d", Some("a")),
        ]);
        assert_eq!(cycles(&g, &["d", "a", "b", "c"]), vec![vec!["a", "b", "c"]]);
        let g = graph(&[("a", Some("b")), ("b", None), ("c", Some("b"))]);
        assert!(cycles(&g, &["a", "b", "c"]).is_empty());
        // Through a database asset that is not in the file.
        let g = graph(&[("a", Some("id:1")), ("id:1", Some("a"))]);
        assert_eq!(cycles(&g, &["a"]), vec![vec!["a", "id:1"]]);
    }
}
