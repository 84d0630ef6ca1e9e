//! The pure core of enalysis-ingest: bytes and a registry snapshot in, readings and rejections
//! out, and the rows those rejections are stored as. Nothing here does I/O (the dependency list
//! says so: no tokio, no database driver, no MQTT client), so all of it is tested with tables of
//! cases and fuzzed.
//!
//! In the order a reading travels: [`model`] (the types), [`catalogue`] (metrics and units),
//! [`registry`] (the snapshot), [`decode`] → [`validate`], then [`batch`] (what the writer
//! holds) → [`corrections`] (a key's readings decided) and [`rejections`] (rows). Beside the
//! path, on the read side: [`intervals`] (energy per interval from a cumulative register).

pub mod batch;
pub mod catalogue;
pub mod corrections;
pub mod decode;
pub mod intervals;
pub mod model;
pub mod registry;
pub mod rejections;

#[cfg(any(test, feature = "fixture"))]
pub mod fixture;
pub mod validate;
