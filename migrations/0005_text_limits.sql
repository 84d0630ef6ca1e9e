-- Upper bounds, in characters (char_length), on every text column of the hierarchy. The admin
-- API and `provision` check the same limits first, from one declaration per column
-- (src/admin/crud.rs, TABLES; an integration test compares it with these constraints); these
-- are the schema's own copy, for every other writer. Without them a 1,000,000-character name
-- reached the unique index and failed there (index row size exceeded).
--
-- Names, titles, external ids and codes: 200 (they sit in unique indexes, whose entries must
-- stay under ~2,700 bytes). Time zones and currencies: 64. Descriptions: 10,000.
--
-- The constraints are validated: a database holding a longer value fails this migration with
-- the constraint's name, and the value must be shortened before the daemon can start.
-- Named {table}_{column}_length: the API maps a violation to the column.

ALTER TABLE portfolios
    ADD CONSTRAINT portfolios_name_length CHECK (char_length(name) <= 200),
    ADD CONSTRAINT portfolios_description_length CHECK (char_length(description) <= 10000);

ALTER TABLE sites
    ADD CONSTRAINT sites_name_length CHECK (char_length(name) <= 200),
    ADD CONSTRAINT sites_location_length CHECK (char_length(location) <= 200),
    ADD CONSTRAINT sites_timezone_length CHECK (char_length(timezone) <= 64);

ALTER TABLE meters
    ADD CONSTRAINT meters_name_length CHECK (char_length(name) <= 200),
    ADD CONSTRAINT meters_external_id_length CHECK (char_length(external_id) <= 200),
    ADD CONSTRAINT meters_description_length CHECK (char_length(description) <= 10000);

ALTER TABLE asset_types
    ADD CONSTRAINT asset_types_code_length CHECK (char_length(code) <= 200),
    ADD CONSTRAINT asset_types_name_length CHECK (char_length(name) <= 200),
    ADD CONSTRAINT asset_types_description_length CHECK (char_length(description) <= 10000);

ALTER TABLE assets
    ADD CONSTRAINT assets_name_length CHECK (char_length(name) <= 200),
    ADD CONSTRAINT assets_external_id_length CHECK (char_length(external_id) <= 200),
    ADD CONSTRAINT assets_equipment_length CHECK (char_length(equipment) <= 200),
    ADD CONSTRAINT assets_manufacturer_length CHECK (char_length(manufacturer) <= 200),
    ADD CONSTRAINT assets_model_length CHECK (char_length(model) <= 200),
    ADD CONSTRAINT assets_description_length CHECK (char_length(description) <= 10000);

ALTER TABLE asset_connections
    ADD CONSTRAINT asset_connections_description_length CHECK (char_length(description) <= 10000);

ALTER TABLE energy_sources
    ADD CONSTRAINT energy_sources_name_length CHECK (char_length(name) <= 200),
    ADD CONSTRAINT energy_sources_external_id_length CHECK (char_length(external_id) <= 200),
    ADD CONSTRAINT energy_sources_description_length CHECK (char_length(description) <= 10000);

ALTER TABLE grid_links
    ADD CONSTRAINT grid_links_name_length CHECK (char_length(name) <= 200),
    ADD CONSTRAINT grid_links_provider_length CHECK (char_length(provider) <= 200);

ALTER TABLE recommendations
    ADD CONSTRAINT recommendations_title_length CHECK (char_length(title) <= 200),
    ADD CONSTRAINT recommendations_description_length CHECK (char_length(description) <= 10000),
    ADD CONSTRAINT recommendations_currency_length CHECK (char_length(currency) <= 64);
