-- The Enalysis hierarchy: portfolios → sites → meters → assets / energy sources, plus asset
-- connections, grid links, recommendations and the asset_types reference table.
-- gen_random_uuid() is built into PostgreSQL 13+, no extension needed.

CREATE TYPE direction_enum AS ENUM ('in', 'out', 'bi');
CREATE TYPE relationship_enum AS ENUM ('energy_flow', 'data_flow', 'dependency');
CREATE TYPE industry_type_enum AS ENUM (
    'biotech', 'datacenter', 'logistics', 'manufacturing', 'pharmaceutical', 'food_beverage',
    'chemicals', 'automotive', 'retail', 'healthcare', 'education', 'hospitality', 'office',
    'warehouse', 'agriculture', 'utilities', 'residential', 'other'
);
CREATE TYPE meter_category_enum AS ENUM ('CONS', 'PROD', 'INJ', 'STOR');
CREATE TYPE reading_frequency_enum AS ENUM ('1min', '5min', '15min', 'hourly', 'daily');
CREATE TYPE quality_enum AS ENUM ('good', 'bad', 'estimated');
CREATE TYPE energy_source_kind_enum AS ENUM (
    'solar', 'wind', 'battery', 'grid', 'generator', 'chp', 'hydrogen', 'hydro', 'geothermal',
    'other'
);
CREATE TYPE recommendation_category_enum AS ENUM (
    'efficiency', 'renewable', 'storage', 'demand_response', 'tariff', 'maintenance', 'other'
);
CREATE TYPE recommendation_status_enum AS ENUM (
    'open', 'accepted', 'in_progress', 'implemented', 'dismissed'
);

-- updated_at is the database's job, so every writer (daemon, application, psql) agrees.
CREATE FUNCTION set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TABLE portfolios (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(btrim(name)) > 0),
    description text,
    metadata    jsonb NOT NULL DEFAULT '{}',
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Provisioning keys portfolios by name.
    CONSTRAINT portfolios_name_key UNIQUE (name)
);

CREATE TABLE sites (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    portfolio_id  uuid NOT NULL REFERENCES portfolios (id) ON DELETE CASCADE,
    name          text NOT NULL CHECK (length(btrim(name)) > 0),
    industry_type industry_type_enum NOT NULL DEFAULT 'other',
    location      text,
    latitude      double precision CHECK (latitude BETWEEN -90 AND 90),
    longitude     double precision CHECK (longitude BETWEEN -180 AND 180),
    timezone      text NOT NULL DEFAULT 'UTC',
    metadata      jsonb NOT NULL DEFAULT '{}',
    active        boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- Provisioning keys sites by name within their portfolio; doubles as "sites of a portfolio".
    CONSTRAINT sites_portfolio_id_name_key UNIQUE (portfolio_id, name)
);

CREATE TABLE meters (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id           uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    name              text NOT NULL CHECK (length(btrim(name)) > 0),
    external_id       text CHECK (length(btrim(external_id)) > 0),
    category          meter_category_enum NOT NULL,
    reading_frequency reading_frequency_enum NOT NULL DEFAULT '15min',
    description       text,
    metadata          jsonb NOT NULL DEFAULT '{}',
    active            boolean NOT NULL DEFAULT true,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT meters_external_id_key UNIQUE (external_id)
);
CREATE INDEX meters_site_id_idx ON meters (site_id);

CREATE TABLE asset_types (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code        text NOT NULL CHECK (length(btrim(code)) > 0),
    name        text NOT NULL,
    description text,
    metadata    jsonb NOT NULL DEFAULT '{}',
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT asset_types_code_key UNIQUE (code)
);

CREATE TABLE assets (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    meter_id        uuid NOT NULL REFERENCES meters (id) ON DELETE CASCADE,
    parent_asset_id uuid REFERENCES assets (id) ON DELETE CASCADE,
    -- Reference data is not owned by the asset: a type in use cannot be deleted.
    asset_type_id   uuid REFERENCES asset_types (id) ON DELETE RESTRICT,
    name            text NOT NULL CHECK (length(btrim(name)) > 0),
    external_id     text CHECK (length(btrim(external_id)) > 0),
    equipment       text,
    manufacturer    text,
    model           text,
    rated_power_kw  double precision CHECK (rated_power_kw >= 0),
    description     text,
    metadata        jsonb NOT NULL DEFAULT '{}',
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT assets_external_id_key UNIQUE (external_id),
    CONSTRAINT assets_not_own_parent CHECK (parent_asset_id IS DISTINCT FROM id)
);
CREATE INDEX assets_meter_id_idx ON assets (meter_id);
CREATE INDEX assets_parent_asset_id_idx ON assets (parent_asset_id) WHERE parent_asset_id IS NOT NULL;
CREATE INDEX assets_asset_type_id_idx ON assets (asset_type_id) WHERE asset_type_id IS NOT NULL;

CREATE TABLE asset_connections (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source_asset_id uuid NOT NULL REFERENCES assets (id) ON DELETE CASCADE,
    target_asset_id uuid NOT NULL REFERENCES assets (id) ON DELETE CASCADE,
    relationship    relationship_enum NOT NULL,
    direction       direction_enum NOT NULL DEFAULT 'out',
    description     text,
    metadata        jsonb NOT NULL DEFAULT '{}',
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT asset_connections_not_self CHECK (source_asset_id <> target_asset_id),
    -- Doubles as "connections from an asset".
    CONSTRAINT asset_connections_source_target_relationship_key
        UNIQUE (source_asset_id, target_asset_id, relationship)
);
CREATE INDEX asset_connections_target_asset_id_idx ON asset_connections (target_asset_id);

CREATE TABLE energy_sources (
    id                       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    meter_id                 uuid NOT NULL REFERENCES meters (id) ON DELETE CASCADE,
    name                     text NOT NULL CHECK (length(btrim(name)) > 0),
    external_id              text CHECK (length(btrim(external_id)) > 0),
    kind                     energy_source_kind_enum NOT NULL,
    capacity_kw              double precision CHECK (capacity_kw >= 0),
    -- Usable energy of a battery (or tank); null for sources that store nothing.
    storage_capacity_kwh     double precision CHECK (storage_capacity_kwh >= 0),
    carbon_intensity_g_per_kwh double precision CHECK (carbon_intensity_g_per_kwh >= 0),
    description              text,
    metadata                 jsonb NOT NULL DEFAULT '{}',
    active                   boolean NOT NULL DEFAULT true,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT energy_sources_external_id_key UNIQUE (external_id)
);
CREATE INDEX energy_sources_meter_id_idx ON energy_sources (meter_id);

CREATE TABLE grid_links (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id          uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    name             text NOT NULL CHECK (length(btrim(name)) > 0),
    direction        direction_enum NOT NULL,
    capacity_kw      double precision CHECK (capacity_kw >= 0),
    provider         text,
    tariff_structure jsonb NOT NULL DEFAULT '{}',
    metadata         jsonb NOT NULL DEFAULT '{}',
    active           boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- Provisioning keys grid links by name within their site; doubles as "links of a site".
    CONSTRAINT grid_links_site_id_name_key UNIQUE (site_id, name)
);

CREATE TABLE recommendations (
    id                          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id                     uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    title                       text NOT NULL CHECK (length(btrim(title)) > 0),
    description                 text,
    category                    recommendation_category_enum NOT NULL,
    status                      recommendation_status_enum NOT NULL DEFAULT 'open',
    estimated_savings_per_year  double precision CHECK (estimated_savings_per_year >= 0),
    currency                    text NOT NULL DEFAULT 'EUR',
    investment_cost             double precision CHECK (investment_cost >= 0),
    roi_percent                 double precision,
    payback_years               double precision CHECK (payback_years >= 0),
    carbon_reduction_kg_per_year double precision CHECK (carbon_reduction_kg_per_year >= 0),
    metadata                    jsonb NOT NULL DEFAULT '{}',
    active                      boolean NOT NULL DEFAULT true,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recommendations_site_id_status_idx ON recommendations (site_id, status);

CREATE TRIGGER portfolios_updated_at BEFORE UPDATE ON portfolios
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER sites_updated_at BEFORE UPDATE ON sites
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER meters_updated_at BEFORE UPDATE ON meters
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER asset_types_updated_at BEFORE UPDATE ON asset_types
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER assets_updated_at BEFORE UPDATE ON assets
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER asset_connections_updated_at BEFORE UPDATE ON asset_connections
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER energy_sources_updated_at BEFORE UPDATE ON energy_sources
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER grid_links_updated_at BEFORE UPDATE ON grid_links
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER recommendations_updated_at BEFORE UPDATE ON recommendations
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
