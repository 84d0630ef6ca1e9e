-- A site's time zone must be one PostgreSQL can compute with: the completeness and interval
-- routes cut days at its local midnight with `AT TIME ZONE`, and an unknown zone there made
-- them answer 400 long after the site was written. The rule is one function, used by this
-- trigger (every writer: the admin API, psql, …) and by `provision`'s check of a file (which
-- reports every unknown zone at once, before it writes).
--
-- `AT TIME ZONE` itself is the test: it accepts what PostgreSQL can use (IANA names such as
-- Europe/Brussels, case-insensitively, and the abbreviations and POSIX rules it knows), at a
-- fraction of a millisecond; a lookup in pg_timezone_names reads the tz database (~18 ms).
-- Rows already stored are not checked: the trigger guards writes from now on.

CREATE FUNCTION time_zone_is_known(zone text) RETURNS boolean
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM now() AT TIME ZONE zone;
    RETURN true;
EXCEPTION WHEN invalid_parameter_value THEN
    RETURN false;
END $$;

-- Raised as a check violation of a named constraint, so the admin API answers 400 naming the
-- column (src/admin/schema.rs, CONSTRAINTS).
CREATE FUNCTION sites_timezone_known() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NOT time_zone_is_known(NEW.timezone) THEN
        RAISE EXCEPTION 'unknown time zone %', quote_literal(NEW.timezone)
            USING ERRCODE = 'check_violation', CONSTRAINT = 'sites_timezone_known',
                  TABLE = 'sites', COLUMN = 'timezone';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER sites_timezone_known
    BEFORE INSERT OR UPDATE OF timezone ON sites
    FOR EACH ROW EXECUTE FUNCTION sites_timezone_known();
