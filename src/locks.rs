//! Every PostgreSQL advisory lock key of the daemon, in one place, so that two jobs never share
//! a key by accident and two writers of the same thing never take different ones.
//!
//! Keys are eight ASCII bytes read as a big-endian `i64`: fixed, and recognisable in
//! `pg_locks` (as its `classid`/`objid` halves).

/// The migrator's session lock, held for a whole `migrate` run so that a second migrator
/// waits instead of racing on the same DDL. Its value must not change: during a rolling
/// upgrade an older binary's migrator takes the same key ("enalysis").
pub const MIGRATIONS: i64 = i64::from_be_bytes(*b"enalysis");

/// Serialises `provision` runs against each other (transaction-scoped), so two operators
/// running it at once do not both insert the same new rows. It used to be the migrator's key,
/// which made a provision run wait for a migration for no reason.
pub const PROVISION: i64 = i64::from_be_bytes(*b"enal:prv");

/// Every change of `assets.parent_asset_id` that could close a cycle (a PATCH through the
/// API, a `provision` run) holds this transaction-scoped lock from before its cycle check
/// until its commit: the check then sees every committed parent change, and no other change
/// can slip in between the check and the write.
pub const ASSET_PARENTS: i64 = i64::from_be_bytes(*b"enal:apa");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_distinct_and_the_migrators_is_unchanged() {
        let keys = [MIGRATIONS, PROVISION, ASSET_PARENTS];
        for (i, a) in keys.iter().enumerate() {
            assert!(!keys[..i].contains(a), "key {a:#x} twice");
        }
        assert_eq!(MIGRATIONS, 0x656e_616c_7973_6973);
    }
}
