//! The one registry that validate's unit tests, the property tests (tests/it/properties.rs)
//! and the fuzz target judge against, so that what they cover is the same world. Behind the
//! `fixture` feature (and `cfg(test)`): never part of the daemon.
//!
//! One meter per category that matters, an asset, a battery and a PV energy source; every
//! entity has an external id, so both ways of naming it are exercised.

use uuid::Uuid;

use crate::model::{Entity, EntityKind, MeterCategory};
use crate::registry::Registry;

pub const M_CONS: &str = "0b6f6a3e-5a47-4c8e-9d0e-2f3b1c4d5e6f";
pub const M_STOR: &str = "1c7a7b4f-6b58-4d9f-8e1f-3a4c2d5e6f70";
pub const M_PROD: &str = "2d8b8c50-7c69-4eaf-9f20-4b5d3e6f7081";
pub const A_PUMP: &str = "3e9c9d61-8d7a-4fb0-a031-5c6e4f708192";
pub const S_BATT: &str = "4fa0ae72-9e8b-4ac1-b142-6d7f508192a3";
pub const S_PV: &str = "5ab1bf83-af9c-4bd2-8253-7e80619203b4";

/// The entities: (kind, id, external id, category, is_battery).
pub const ENTITIES: [(EntityKind, &str, &str, MeterCategory, bool); 6] = {
    use EntityKind::*;
    use MeterCategory::*;
    [
        (Meter, M_CONS, "EAN-CONS", Cons, false),
        (Meter, M_STOR, "EAN-STOR", Stor, false),
        (Meter, M_PROD, "EAN-PROD", Prod, false),
        (Asset, A_PUMP, "pump-1", Cons, false),
        (EnergySource, S_BATT, "battery-1", Cons, true),
        (EnergySource, S_PV, "pv-1", Prod, false),
    ]
};

/// The registry of [`ENTITIES`].
pub fn registry() -> Registry {
    Registry::new(
        ENTITIES
            .iter()
            .map(|&(kind, id, ext, category, is_battery)| Entity {
                kind,
                // The constants above are UUIDs; a typo would fail every test using them.
                id: Uuid::try_parse(id).unwrap_or_default(),
                external_id: Some(ext.to_owned()),
                category,
                is_battery,
            }),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_fixture_entity_is_in_the_registry_under_both_names() {
        let r = super::registry();
        assert_eq!(r.len(), super::ENTITIES.len());
        for (kind, id, ext, ..) in super::ENTITIES {
            assert_eq!(
                r.resolve(kind, id).map(|e| e.id.to_string()).as_deref(),
                Some(id)
            );
            assert_eq!(
                r.resolve(kind, ext).map(|e| e.id.to_string()).as_deref(),
                Some(id)
            );
        }
    }
}
