-- A small demo site for `scripts/dev run` (idempotent). Replaced by `enalysis-ingest provision
-- config/inventory.example.yaml` once provisioning exists.
INSERT INTO portfolios (name, description) VALUES ('Demo', 'Created by scripts/dev run')
ON CONFLICT (name) DO NOTHING;

INSERT INTO sites (portfolio_id, name, industry_type, location, timezone)
SELECT id, 'Demo datacenter', 'datacenter', 'Brussels', 'Europe/Brussels'
FROM portfolios WHERE name = 'Demo'
ON CONFLICT (portfolio_id, name) DO NOTHING;

INSERT INTO meters (site_id, name, external_id, category, reading_frequency)
SELECT s.id, m.name, m.external_id, m.category::meter_category_enum, '1min'
FROM sites s
CROSS JOIN (VALUES
    ('Grid consumption', 'demo-grid-cons', 'CONS'),
    ('Solar production', 'demo-pv-prod', 'PROD'),
    ('Grid injection', 'demo-grid-inj', 'INJ'),
    ('Battery', 'demo-battery', 'STOR')
) AS m (name, external_id, category)
WHERE s.name = 'Demo datacenter'
ON CONFLICT (external_id) DO NOTHING;

INSERT INTO energy_sources (meter_id, name, external_id, kind, capacity_kw, storage_capacity_kwh)
SELECT m.id, e.name, e.external_id, e.kind::energy_source_kind_enum, e.kw, e.kwh
FROM meters m
JOIN (VALUES
    ('demo-pv-prod', 'Rooftop PV', 'demo-pv-array', 'solar', 250.0, NULL),
    ('demo-battery', 'Battery bank', 'demo-battery-bank', 'battery', 500.0, 1000.0)
) AS e (meter, name, external_id, kind, kw, kwh) ON e.meter = m.external_id
ON CONFLICT (external_id) DO NOTHING;
