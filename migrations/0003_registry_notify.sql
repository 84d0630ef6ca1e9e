-- The ingest daemon keeps the active meters / assets / energy sources in memory. Any change to
-- those tables (from the admin API, provisioning, or plain SQL) notifies it, so a reading for an
-- entity created a second ago is accepted. Statement-level: one notification per statement, and
-- PostgreSQL folds identical notifications of one transaction into one. The payload is only the
-- table name; the daemon reloads its whole snapshot, which is simpler than applying deltas and
-- also covers category changes of a meter that its assets and energy sources inherit.
CREATE FUNCTION notify_registry_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('enalysis_registry', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

CREATE TRIGGER meters_notify_registry AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON meters
    FOR EACH STATEMENT EXECUTE FUNCTION notify_registry_change();
CREATE TRIGGER assets_notify_registry AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON assets
    FOR EACH STATEMENT EXECUTE FUNCTION notify_registry_change();
CREATE TRIGGER energy_sources_notify_registry
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON energy_sources
    FOR EACH STATEMENT EXECUTE FUNCTION notify_registry_change();
