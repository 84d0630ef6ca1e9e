//! Reference data every installation needs: the asset types of the original schema.

use tokio_postgres::Client;

/// `(code, name, description)` of each asset type.
pub const ASSET_TYPES: &[(&str, &str, &str)] = &[
    ("CONS", "Consumption", "Equipment that consumes energy"),
    ("PROD", "Production", "Equipment that produces energy"),
    (
        "C/I",
        "Commercial / industrial",
        "Commercial or industrial load",
    ),
    (
        "INJ",
        "Injection",
        "Equipment that injects energy into the grid",
    ),
];

/// Inserts what is missing and leaves existing rows (and operators' edits to them) alone.
/// Returns how many rows were inserted.
pub async fn run(client: &Client) -> Result<u64, tokio_postgres::Error> {
    let codes: Vec<&str> = ASSET_TYPES.iter().map(|t| t.0).collect();
    let names: Vec<&str> = ASSET_TYPES.iter().map(|t| t.1).collect();
    let descriptions: Vec<&str> = ASSET_TYPES.iter().map(|t| t.2).collect();
    client
        .execute(
            "INSERT INTO asset_types (code, name, description)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
             ON CONFLICT (code) DO NOTHING",
            &[&codes, &names, &descriptions],
        )
        .await
}
