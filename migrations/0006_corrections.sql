-- Corrections (CONTRACT.md §4): a reading that replaces a stored one keeps the replaced version
-- here, written in the same transaction as the replacement; a different reading the policy does
-- not apply is rejected as `superseded`.

-- The new label is not used in this transaction (PostgreSQL forbids that), only by the daemon.
ALTER TYPE rejection_reason_enum ADD VALUE IF NOT EXISTS 'superseded';

-- The replaced versions, all columns as they were in `measurements`, and when each was
-- replaced. A key replaced twice has two rows. Written only on the conflict path, so not
-- partitioned; its one index serves "one entity, one metric, a time range" (the revisions
-- endpoint) and the retention's delete by `ts`.
CREATE TABLE measurement_revisions (
    entity_type entity_type_enum NOT NULL,
    entity_id   uuid NOT NULL,
    metric      text NOT NULL,
    ts          timestamptz NOT NULL,
    value       double precision NOT NULL,
    unit        text NOT NULL,
    quality     quality_enum NOT NULL,
    received_at timestamptz NOT NULL,
    replaced_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX measurement_revisions_entity_metric_ts
    ON measurement_revisions (entity_type, entity_id, metric, ts);

-- The revisions of a reading go where the reading goes: with its entity (hard delete) and with
-- its partition (retention). Same functions as in 0002, each with one more statement.
CREATE OR REPLACE FUNCTION delete_entity_measurements() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM measurements m
    USING gone g
    WHERE m.entity_type = TG_ARGV[0]::entity_type_enum AND m.entity_id = g.id;
    DELETE FROM measurement_revisions r
    USING gone g
    WHERE r.entity_type = TG_ARGV[0]::entity_type_enum AND r.entity_id = g.id;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION drop_measurement_partitions(before timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part    record;
    dropped integer := 0;
    upto    timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('enalysis.measurement_partitions'));
    FOR part IN
        SELECT c.relname,
               (to_date(substr(c.relname, 15, 4) || substr(c.relname, 20, 2), 'YYYYMM')
                + interval '1 month')::timestamp AT TIME ZONE 'UTC' AS hi
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'measurements'::regclass
          AND c.relname ~ '^measurements_y[0-9]{4}m[0-9]{2}$'
          AND (to_date(substr(c.relname, 15, 4) || substr(c.relname, 20, 2), 'YYYYMM')
               + interval '1 month')::timestamp AT TIME ZONE 'UTC' <= before
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        upto := greatest(upto, part.hi);
        dropped := dropped + 1;
    END LOOP;
    IF upto IS NOT NULL THEN
        DELETE FROM measurement_revisions WHERE ts < upto;
    END IF;
    RETURN dropped;
END;
$$;
