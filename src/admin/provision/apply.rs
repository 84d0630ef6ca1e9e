//! Writing an inventory: every row the file names, as one list in the order they must be
//! written (parents first), and one loop over it. A row is its table's columns from
//! [`schema`] with their values; the loop finds it by its key (locking it), inserts it when
//! absent, and otherwise updates only the columns whose values differ, so an identical row is
//! not touched at all. Values travel as text cast to the column's type, as in the API.

use std::collections::HashMap;

use anyhow::{Context, anyhow};
use serde_json::Value as Json;
use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::check::Known;
use super::file::{AssetSpec, Columns, Inventory, MeterSpec};
use super::pg;
use super::plan::{Kind, Outcome, Plan};
use crate::admin::schema::{self, Column, Kind as ColumnKind, Param, Table};

/// A value as the loop binds it.
enum Arg {
    /// Known before writing.
    Param(Param),
    /// The id of an earlier row of the list (its index): a parent written by this run.
    Row(usize),
}

/// One column of a row and its value.
struct Value {
    column: &'static Column,
    /// The file's key for it, for the plan.
    field: &'static str,
    arg: Arg,
}

/// One row the file names.
struct Row {
    kind: Kind,
    table: &'static Table,
    /// How the plan names it.
    name: String,
    /// The columns that identify the row.
    key: Vec<Value>,
    /// The parent column the row may be moved along (a meter between sites).
    parent: Option<Value>,
    values: Vec<Value>,
}

fn text(s: &str) -> Arg {
    Arg::Param(Some(s.to_string()))
}

fn object(v: &Json) -> Arg {
    Arg::Param(Some(v.to_string()))
}

fn id(id: Option<Uuid>) -> Arg {
    Arg::Param(id.map(|u| u.to_string()))
}

/// Builds the rows of one table: each value names its column, which the schema must describe.
struct Builder {
    table: &'static Table,
}

impl Builder {
    fn new(table: &str) -> anyhow::Result<Self> {
        let table =
            schema::table(table).ok_or_else(|| anyhow!("no table {table} in the schema"))?;
        Ok(Self { table })
    }

    /// `column`, whose file key is `field`.
    fn named(&self, column: &str, field: &'static str, arg: Arg) -> anyhow::Result<Value> {
        let column = self
            .table
            .column(column)
            .ok_or_else(|| anyhow!("no column {}.{column} in the schema", self.table.name))?;
        Ok(Value { column, field, arg })
    }

    /// `column`, whose file key is its name.
    fn value(&self, column: &str, arg: Arg) -> anyhow::Result<Value> {
        let mut value = self.named(column, "", arg)?;
        value.field = value.column.name;
        Ok(value)
    }

    /// A row with `values`, plus `active` when the file gives it (see the module doc of
    /// [`super`]: left out, it is not touched).
    fn row(
        &self,
        kind: Kind,
        name: String,
        key: Vec<Value>,
        parent: Option<Value>,
        mut values: Vec<Value>,
        active: Option<bool>,
    ) -> anyhow::Result<Row> {
        if let Some(a) = active {
            values.push(self.value("active", text(&a.to_string()))?);
        }
        Ok(Row {
            kind,
            table: self.table,
            name,
            key,
            parent,
            values,
        })
    }
}

fn labelled(external_id: &str, name: &str) -> String {
    format!("{external_id} ({name})")
}

/// The index of the row written for `key`.
fn at(index: &HashMap<&str, usize>, key: &str, what: &str) -> anyhow::Result<usize> {
    index
        .get(key)
        .copied()
        .ok_or_else(|| anyhow!("the {what} {key:?} is not written before what refers to it"))
}

/// The columns only the schema describes, as the file gave them (or their defaults).
fn columns(columns: &Columns) -> impl Iterator<Item = Value> + '_ {
    columns.iter().map(|(column, param)| Value {
        column,
        field: column.name,
        arg: Arg::Param(param.clone()),
    })
}

/// Every row the file names, in the order they are written: each kind after the kinds it
/// refers to, and assets parents first. Each row is its keys, its parent, the fields the file
/// names by key (names, references), the columns only the schema describes, and `metadata`.
fn rows(inv: &Inventory, known: &Known) -> anyhow::Result<Vec<Row>> {
    let mut rows: Vec<Row> = Vec::new();
    let with = |mut own: Vec<Value>, rest: &Columns, metadata: anyhow::Result<Value>| {
        own.extend(columns(rest));
        own.push(metadata?);
        anyhow::Ok(own)
    };

    let t = Builder::new("portfolios")?;
    let mut portfolios: HashMap<&str, usize> = HashMap::new();
    for p in &inv.portfolios {
        portfolios.insert(&p.name, rows.len());
        rows.push(t.row(
            Kind::Portfolio,
            p.name.clone(),
            vec![t.value("name", text(&p.name))?],
            None,
            with(vec![], &p.columns, t.value("metadata", object(&p.metadata)))?,
            p.active,
        )?);
    }

    // Keyed by path: two portfolios may each have a site of the same name.
    let t = Builder::new("sites")?;
    let mut sites: HashMap<&str, usize> = HashMap::new();
    for (p, s) in inv.sites() {
        let portfolio = at(&portfolios, &p.name, "portfolio")?;
        sites.insert(&s.path, rows.len());
        let own = vec![
            t.value("industry_type", text(s.industry_type))?,
            t.value("timezone", text(&s.timezone))?,
        ];
        rows.push(t.row(
            Kind::Site,
            format!("{} / {}", p.name, s.name),
            vec![
                t.value("portfolio_id", Arg::Row(portfolio))?,
                t.value("name", text(&s.name))?,
            ],
            None,
            with(own, &s.columns, t.value("metadata", object(&s.metadata)))?,
            s.active,
        )?);
    }

    let t = Builder::new("meters")?;
    let mut meters: HashMap<&str, usize> = HashMap::new();
    for (s, m) in inv.meters() {
        let site = at(&sites, &s.path, "site")?;
        meters.insert(&m.external_id, rows.len());
        rows.push(t.row(
            Kind::Meter,
            labelled(&m.external_id, &m.name),
            vec![t.value("external_id", text(&m.external_id))?],
            Some(t.value("site_id", Arg::Row(site))?),
            with(
                vec![t.value("name", text(&m.name))?],
                &m.columns,
                t.value("metadata", object(&m.metadata)),
            )?,
            m.active,
        )?);
    }

    // An asset refers to its parent, and a connection to its ends, by external id: a row of
    // this run, or one the checks found in the database.
    let t = Builder::new("assets")?;
    let mut assets: HashMap<&str, usize> = HashMap::new();
    let asset = |assets: &HashMap<&str, usize>, e: &str| -> anyhow::Result<Arg> {
        match (assets.get(e), known.assets.get(e)) {
            (Some(i), _) => Ok(Arg::Row(*i)),
            (None, Some(id)) => Ok(Arg::Param(Some(id.to_string()))),
            (None, None) => Err(anyhow!("no asset {e:?} in the file or the database")),
        }
    };
    let file_assets: Vec<(&MeterSpec, &AssetSpec)> = inv.assets().collect();
    for (m, a) in parents_first(&file_assets) {
        let meter = at(&meters, &m.external_id, "meter")?;
        let parent = match a.parent.as_deref() {
            Some(p) => asset(&assets, p)?,
            None => Arg::Param(None),
        };
        let asset_type = match a.asset_type.as_deref() {
            Some(code) => id(Some(
                *known
                    .asset_types
                    .get(code)
                    .ok_or_else(|| anyhow!("no asset type {code:?}"))?,
            )),
            None => id(None),
        };
        assets.insert(&a.external_id, rows.len());
        let own = vec![
            t.value("name", text(&a.name))?,
            t.named("parent_asset_id", "parent", parent)?,
            t.named("asset_type_id", "asset_type", asset_type)?,
        ];
        rows.push(t.row(
            Kind::Asset,
            labelled(&a.external_id, &a.name),
            vec![t.value("external_id", text(&a.external_id))?],
            Some(t.value("meter_id", Arg::Row(meter))?),
            with(own, &a.columns, t.value("metadata", object(&a.metadata)))?,
            a.active,
        )?);
    }

    let t = Builder::new("energy_sources")?;
    for (m, e) in inv.energy_sources() {
        let meter = at(&meters, &m.external_id, "meter")?;
        rows.push(t.row(
            Kind::EnergySource,
            labelled(&e.external_id, &e.name),
            vec![t.value("external_id", text(&e.external_id))?],
            Some(t.value("meter_id", Arg::Row(meter))?),
            with(
                vec![t.value("name", text(&e.name))?],
                &e.columns,
                t.value("metadata", object(&e.metadata)),
            )?,
            e.active,
        )?);
    }

    let t = Builder::new("grid_links")?;
    for (s, g) in inv.grid_links() {
        let site = at(&sites, &s.path, "site")?;
        rows.push(t.row(
            Kind::GridLink,
            format!("{} / {}", s.name, g.name),
            vec![
                t.value("site_id", Arg::Row(site))?,
                t.value("name", text(&g.name))?,
            ],
            None,
            with(vec![], &g.columns, t.value("metadata", object(&g.metadata)))?,
            g.active,
        )?);
    }

    let t = Builder::new("asset_connections")?;
    for c in inv.connections() {
        rows.push(t.row(
            Kind::AssetConnection,
            format!("{} → {} ({})", c.source, c.target, c.relationship),
            vec![
                t.value("source_asset_id", asset(&assets, &c.source)?)?,
                t.value("target_asset_id", asset(&assets, &c.target)?)?,
                t.value("relationship", text(c.relationship))?,
            ],
            None,
            with(vec![], &c.columns, t.value("metadata", object(&c.metadata)))?,
            c.active,
        )?);
    }
    Ok(rows)
}

/// Writes every row the file names and lists, per kind, what its scope holds that it does not
/// name.
pub(super) async fn apply(
    tx: &Transaction<'_>,
    inv: &Inventory,
    known: &Known,
) -> anyhow::Result<Plan> {
    let rows = rows(inv, known)?;
    let mut plan = Plan::default();
    let mut ids: Vec<Uuid> = Vec::with_capacity(rows.len());
    for row in &rows {
        let (id, outcome) = upsert(tx, row, &ids).await?;
        ids.push(id);
        plan.push(row.kind, row.name.clone(), outcome);
    }

    // What the file's scope holds that the file does not name.
    let of = |kind: Kind| -> Vec<Uuid> {
        rows.iter()
            .zip(&ids)
            .filter(|(r, _)| r.kind == kind)
            .map(|(_, id)| *id)
            .collect()
    };
    let portfolios = of(Kind::Portfolio);
    let sites = of(Kind::Site);
    let meters = of(Kind::Meter);
    let file_asset_ids = of(Kind::Asset);
    let source_ids = of(Kind::EnergySource);
    let link_ids = of(Kind::GridLink);
    let connection_ids = of(Kind::AssetConnection);
    // Each query lists the rows of its kind under the file's parents ($1) that the file does not
    // name ($2). Portfolios have no parent: every other portfolio is listed ($1 is unused there,
    // kept so that all seven take the same two parameters).
    const LABEL: &str = "coalesce(external_id || ' (' || name || ')', name)";
    let queries: [(Kind, String, &Vec<Uuid>, &Vec<Uuid>); 7] = [
        (
            Kind::Portfolio,
            "SELECT name FROM portfolios WHERE cardinality($1::uuid[]) >= 0 AND NOT (id = ANY($2))
             ORDER BY 1"
                .into(),
            &portfolios,
            &portfolios,
        ),
        (
            Kind::Site,
            "SELECT p.name || ' / ' || s.name FROM sites s JOIN portfolios p ON p.id = s.portfolio_id
             WHERE s.portfolio_id = ANY($1) AND NOT (s.id = ANY($2)) ORDER BY 1"
                .into(),
            &portfolios,
            &sites,
        ),
        (
            Kind::Meter,
            format!(
                "SELECT {LABEL} FROM meters WHERE site_id = ANY($1) AND NOT (id = ANY($2)) ORDER BY 1"
            ),
            &sites,
            &meters,
        ),
        (
            Kind::Asset,
            format!(
                "SELECT {LABEL} FROM assets WHERE meter_id = ANY($1) AND NOT (id = ANY($2)) ORDER BY 1"
            ),
            &meters,
            &file_asset_ids,
        ),
        (
            Kind::EnergySource,
            format!(
                "SELECT {LABEL} FROM energy_sources WHERE meter_id = ANY($1) AND NOT (id = ANY($2))
                 ORDER BY 1"
            ),
            &meters,
            &source_ids,
        ),
        (
            Kind::GridLink,
            "SELECT s.name || ' / ' || g.name FROM grid_links g JOIN sites s ON s.id = g.site_id
             WHERE g.site_id = ANY($1) AND NOT (g.id = ANY($2)) ORDER BY 1"
                .into(),
            &sites,
            &link_ids,
        ),
        (
            Kind::AssetConnection,
            "SELECT coalesce(a.external_id, a.name) || ' → ' || coalesce(b.external_id, b.name)
                    || ' (' || c.relationship || ')'
             FROM asset_connections c
             JOIN assets a ON a.id = c.source_asset_id
             JOIN assets b ON b.id = c.target_asset_id
             WHERE (c.source_asset_id = ANY($1) OR c.target_asset_id = ANY($1))
               AND NOT (c.id = ANY($2)) ORDER BY 1"
                .into(),
            &file_asset_ids,
            &connection_ids,
        ),
    ];
    for (kind, sql, scope, named) in queries {
        let rows = tx
            .query(&sql, &[scope, named])
            .await
            .map_err(pg)
            .with_context(|| format!("cannot list the {} left", kind.plural()))?;
        let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if !names.is_empty() {
            plan.left.insert(kind, names);
        }
    }
    Ok(plan)
}

/// The SQL (over `t`) naming the row a parent column points at, for the plan's "moved from":
/// its external id where its table has one, else its name.
fn parent_label(column: &Column) -> String {
    let ColumnKind::Uuid {
        refers_to: Some(table),
    } = column.kind
    else {
        return "NULL::text".into();
    };
    let label = if schema::column(table, "external_id").is_some() {
        "coalesce(p.external_id, p.name)"
    } else {
        "p.name"
    };
    format!(
        "(SELECT {label} FROM {table} p WHERE p.id = t.{})",
        column.name
    )
}

/// The parameter of `arg`, once the rows before it have their ids.
fn bind(arg: &Arg, ids: &[Uuid]) -> anyhow::Result<Param> {
    match arg {
        Arg::Param(p) => Ok(p.clone()),
        Arg::Row(i) => ids
            .get(*i)
            .map(|id| Some(id.to_string()))
            .ok_or_else(|| anyhow!("row {i} is referred to before it is written")),
    }
}

/// Finds `row` by its key (locking it), inserts it when absent, and otherwise updates only the
/// columns whose values differ; an identical row is not touched at all.
async fn upsert(tx: &Transaction<'_>, row: &Row, ids: &[Uuid]) -> anyhow::Result<(Uuid, Outcome)> {
    let table = row.table.name;
    let all: Vec<&Value> = row
        .key
        .iter()
        .chain(&row.parent)
        .chain(&row.values)
        .collect();
    let args: Vec<Param> = all
        .iter()
        .map(|v| bind(&v.arg, ids))
        .collect::<anyhow::Result<_>>()?;
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
    let placeholders: Vec<String> = all
        .iter()
        .enumerate()
        .map(|(i, v)| v.column.placeholder(i + 1))
        .collect();
    let nkey = row.key.len();

    let wheres: Vec<String> = row
        .key
        .iter()
        .zip(&placeholders)
        .map(|(v, ph)| format!("t.{} = {ph}", v.column.name))
        .collect();
    let mut select = vec![
        "t.id".to_string(),
        row.parent
            .as_ref()
            .map_or("NULL::text".into(), |p| parent_label(p.column)),
    ];
    select.extend(
        all[nkey..]
            .iter()
            .zip(&placeholders[nkey..])
            .map(|(v, ph)| format!("t.{} IS DISTINCT FROM {ph}", v.column.name)),
    );
    let sql = format!(
        "SELECT {} FROM {table} t WHERE {} FOR UPDATE",
        select.join(", "),
        wheres.join(" AND ")
    );
    let found = tx
        .query_opt(&sql, &params)
        .await
        .map_err(pg)
        .with_context(|| format!("cannot read {table}"))?;

    let Some(found) = found else {
        let columns: Vec<&str> = all.iter().map(|v| v.column.name).collect();
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES ({}) RETURNING id",
            columns.join(", "),
            placeholders.join(", ")
        );
        let inserted = tx
            .query_one(&sql, &params)
            .await
            .map_err(pg)
            .with_context(|| format!("cannot insert into {table}"))?;
        return Ok((inserted.get(0), Outcome::Created));
    };

    let id: Uuid = found.get(0);
    let mut changed: Vec<(&Value, &Param)> = Vec::new();
    let mut moved_from = None;
    for (i, (v, arg)) in all[nkey..].iter().zip(&args[nkey..]).enumerate() {
        if found.get::<_, bool>(i + 2) {
            changed.push((v, arg));
            if i == 0 && row.parent.is_some() {
                let from: Option<String> = found.get(1);
                moved_from = Some(from.unwrap_or_default());
            }
        }
    }
    if changed.is_empty() {
        return Ok((id, Outcome::Unchanged));
    }
    let sets: Vec<String> = changed
        .iter()
        .enumerate()
        .map(|(i, (v, _))| format!("{} = {}", v.column.name, v.column.placeholder(i + 2)))
        .collect();
    let sql = format!("UPDATE {table} SET {} WHERE id = $1", sets.join(", "));
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&id];
    params.extend(changed.iter().map(|(_, a)| *a as &(dyn ToSql + Sync)));
    tx.execute(&sql, &params)
        .await
        .map_err(pg)
        .with_context(|| format!("cannot update {table}"))?;
    let parent_column = row.parent.as_ref().map(|p| p.column.name);
    let fields = changed
        .iter()
        .filter(|(v, _)| Some(v.column.name) != parent_column)
        .map(|(v, _)| v.field)
        .collect();
    Ok((id, Outcome::Changed { fields, moved_from }))
}

/// The file's assets ordered so that a parent declared in the file comes before its children
/// (it must exist before a child can point at it). The parent links are acyclic by then.
pub(super) fn parents_first<'a>(
    assets: &[(&'a MeterSpec, &'a AssetSpec)],
) -> Vec<(&'a MeterSpec, &'a AssetSpec)> {
    let index: HashMap<&str, usize> = assets
        .iter()
        .enumerate()
        .map(|(i, (_, a))| (a.external_id.as_str(), i))
        .collect();
    let mut placed = vec![false; assets.len()];
    let mut out = Vec::with_capacity(assets.len());
    for start in 0..assets.len() {
        let mut chain = Vec::new();
        let mut at = Some(start);
        while let Some(i) = at {
            if placed[i] || chain.contains(&i) {
                break;
            }
            chain.push(i);
            at = assets[i]
                .1
                .parent
                .as_deref()
                .and_then(|p| index.get(p).copied());
        }
        for &i in chain.iter().rev() {
            placed[i] = true;
            out.push(assets[i]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::provision::file::tests::with_meter;
    use crate::admin::provision::file::{Format, decode, parse};

    #[test]
    fn parents_are_written_before_their_children() {
        let yaml = with_meter(
            "      assets:\n      - {external_id: c, name: C, parent: b}\n      - {external_id: b, name: B, parent: a}\n      - {external_id: a, name: A}\n      - {external_id: x, name: X, parent: elsewhere}\n",
        );
        let value = parse(&yaml, Format::Yaml).expect("parses");
        let mut problems = Vec::new();
        let inv = decode(&value, &mut problems);
        let assets: Vec<_> = inv.assets().collect();
        let order: Vec<&str> = parents_first(&assets)
            .iter()
            .map(|(_, a)| a.external_id.as_str())
            .collect();
        assert_eq!(order, ["a", "b", "c", "x"]);
    }

    /// Every column provision writes is one the schema describes: the example inventory, which
    /// has every kind and key, becomes rows without an error.
    #[test]
    fn the_example_inventory_becomes_rows_of_described_columns() {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/inventory.example.yaml"
        ));
        let value = parse(text, Format::Yaml).expect("parses");
        let mut problems = Vec::new();
        let inv = decode(&value, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let known = Known {
            asset_types: ["CONS", "PROD", "C/I", "INJ"]
                .into_iter()
                .map(|c| (c.to_string(), Uuid::new_v4()))
                .collect(),
            assets: HashMap::new(),
        };
        let rows = rows(&inv, &known).expect("rows");
        for kind in Kind::ALL {
            assert!(rows.iter().any(|r| r.kind == kind), "{kind:?}");
        }
        // Every row refers only to rows before it.
        for (i, r) in rows.iter().enumerate() {
            for v in r.key.iter().chain(&r.parent).chain(&r.values) {
                if let Arg::Row(j) = v.arg {
                    assert!(j < i, "{} refers to a later row", r.name);
                }
            }
        }
    }
}
