//! The registry: which meters, assets and energy sources are active, as an immutable in-memory
//! snapshot that validation resolves topic and gateway keys against.
//!
//! Architecture Invariant: a [`Registry`] is never mutated after it is built. A reload builds a
//! new one and swaps it in whole, so a message is always judged against one consistent snapshot.

// ---------------------------------------------------------------------------------------------
// The snapshot (pure, no I/O).
// ---------------------------------------------------------------------------------------------

use std::collections::HashMap;

use uuid::Uuid;

use crate::model::{Entity, EntityKind};

/// Every active entity, findable by kind and id or by kind and external id.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    /// One table per [`EntityKind`], indexed by [`slot`]: a key is only ever looked up within
    /// the kind its topic or gateway key names, and per-kind maps let an external id be looked
    /// up as a borrowed `&str` without building a `(kind, String)` key.
    kinds: [Kind; 3],
}

#[derive(Debug, Default, Clone)]
struct Kind {
    by_id: HashMap<Uuid, Entity>,
    /// External id → id. External ids are unique per kind in the database.
    by_external_id: HashMap<String, Uuid>,
}

fn slot(kind: EntityKind) -> usize {
    match kind {
        EntityKind::Meter => 0,
        EntityKind::Asset => 1,
        EntityKind::EnergySource => 2,
    }
}

impl Registry {
    /// Builds a snapshot. Should an id appear twice, the later entity wins (with its external
    /// id); the same holds for an external id claimed by two entities of one kind.
    pub fn new(entities: impl IntoIterator<Item = Entity>) -> Self {
        let mut registry = Self::default();
        for entity in entities {
            let kind = &mut registry.kinds[slot(entity.kind)];
            if let Some(old) = kind.by_id.remove(&entity.id) {
                if let Some(ext) = old.external_id {
                    if kind.by_external_id.get(&ext) == Some(&old.id) {
                        kind.by_external_id.remove(&ext);
                    }
                }
            }
            if let Some(ext) = &entity.external_id {
                kind.by_external_id.insert(ext.clone(), entity.id);
            }
            kind.by_id.insert(entity.id, entity);
        }
        registry
    }

    /// The active entity of this kind that `key` names: its UUID (hyphenated, any case) or else
    /// its external id (exact match). The id is tried first, so an external id that happens to
    /// look like a UUID still resolves when no entity has that id.
    pub fn resolve(&self, kind: EntityKind, key: &str) -> Option<&Entity> {
        let kind = &self.kinds[slot(kind)];
        if key.len() == 36 {
            if let Ok(id) = Uuid::try_parse(key) {
                if let Some(entity) = kind.by_id.get(&id) {
                    return Some(entity);
                }
            }
        }
        let id = kind.by_external_id.get(key)?;
        kind.by_id.get(id)
    }

    /// The entity of this kind with this id.
    pub fn get(&self, kind: EntityKind, id: Uuid) -> Option<&Entity> {
        self.kinds[slot(kind)].by_id.get(&id)
    }

    /// Number of entities of all kinds.
    pub fn len(&self) -> usize {
        self.kinds.iter().map(|k| k.by_id.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.iter().all(|k| k.by_id.is_empty())
    }

    /// Number of entities of one kind.
    pub fn count(&self, kind: EntityKind) -> usize {
        self.kinds[slot(kind)].by_id.len()
    }

    /// Every entity, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Entity> {
        self.kinds.iter().flat_map(|k| k.by_id.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MeterCategory;

    const METER: &str = "0b6f6a3e-5a47-4c8e-9d0e-2f3b1c4d5e6f";
    const ASSET: &str = "1c7a7b4f-6b58-4d9f-8e1f-3a4c2d5e6f70";
    /// An external id that looks like a UUID but is not the id of any entity.
    const UUID_LIKE_EXT: &str = "99999999-9999-4999-8999-999999999999";

    fn entity(kind: EntityKind, id: &str, ext: Option<&str>) -> Entity {
        Entity {
            kind,
            id: Uuid::parse_str(id).expect("test uuid"),
            external_id: ext.map(str::to_owned),
            category: MeterCategory::Cons,
            is_battery: false,
        }
    }

    fn registry() -> Registry {
        Registry::new([
            entity(EntityKind::Meter, METER, Some("EAN-541234")),
            entity(EntityKind::Asset, ASSET, Some(UUID_LIKE_EXT)),
            entity(
                EntityKind::EnergySource,
                "2d8b8c50-7c69-4eaf-9f20-4b5d3e6f7081",
                None,
            ),
        ])
    }

    /// Resolves `key` as `kind` and returns the id found, as a lowercase string.
    fn check(kind: EntityKind, key: &str) -> Option<String> {
        registry().resolve(kind, key).map(|e| e.id.to_string())
    }

    #[test]
    fn keys_resolve_by_id_or_external_id_within_their_kind() {
        let cases: &[(EntityKind, &str, Option<&str>)] = &[
            (EntityKind::Meter, METER, Some(METER)),
            (
                EntityKind::Meter,
                "0B6F6A3E-5A47-4C8E-9D0E-2F3B1C4D5E6F",
                Some(METER),
            ),
            (EntityKind::Meter, "EAN-541234", Some(METER)),
            // External ids match exactly.
            (EntityKind::Meter, "ean-541234", None),
            (EntityKind::Meter, " EAN-541234", None),
            // A key never crosses kinds.
            (EntityKind::Asset, METER, None),
            (EntityKind::Asset, "EAN-541234", None),
            // Only the hyphenated form is an id.
            (EntityKind::Meter, "0b6f6a3e5a474c8e9d0e2f3b1c4d5e6f", None),
            // A UUID-shaped external id resolves when no entity has that id.
            (EntityKind::Asset, UUID_LIKE_EXT, Some(ASSET)),
            (EntityKind::Meter, "", None),
            (EntityKind::EnergySource, "", None),
        ];
        for &(kind, key, expected) in cases {
            assert_eq!(check(kind, key).as_deref(), expected, "{kind:?} {key:?}");
        }
    }

    #[test]
    fn an_id_wins_over_an_external_id_that_spells_it() {
        let other = "3e9c9d61-8d7a-4fb0-a031-5c6e4f708192";
        let r = Registry::new([
            entity(EntityKind::Meter, METER, None),
            entity(EntityKind::Meter, other, Some(METER)),
        ]);
        let found = r
            .resolve(EntityKind::Meter, METER)
            .map(|e| e.id.to_string());
        assert_eq!(found.as_deref(), Some(METER));
    }

    #[test]
    fn sizes_are_counted_per_kind_and_in_total() {
        let r = registry();
        assert_eq!(r.len(), 3);
        assert!(!r.is_empty());
        for kind in EntityKind::ALL {
            assert_eq!(r.count(kind), 1);
        }
        assert_eq!(r.iter().count(), 3);
        assert!(Registry::new([]).is_empty());
        assert_eq!(Registry::default().len(), 0);
    }

    #[test]
    fn a_repeated_id_keeps_the_later_entity_and_drops_its_old_external_id() {
        let r = Registry::new([
            entity(EntityKind::Meter, METER, Some("old")),
            entity(EntityKind::Meter, METER, Some("new")),
        ]);
        assert_eq!(r.len(), 1);
        assert!(r.resolve(EntityKind::Meter, "old").is_none());
        assert!(r.resolve(EntityKind::Meter, "new").is_some());
        let id = Uuid::parse_str(METER).expect("uuid");
        assert!(r.get(EntityKind::Meter, id).is_some());
    }
}
