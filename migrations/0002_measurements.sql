-- The integration point with the application: measurements, and rejected_readings so that
-- nothing is dropped silently (CONTRACT.md §2).

CREATE TYPE entity_type_enum AS ENUM ('meter', 'asset', 'energy_source');

CREATE TYPE rejection_reason_enum AS ENUM (
    'malformed_payload', 'payload_too_large', 'unknown_topic', 'unknown_entity',
    'invalid_timestamp', 'future_timestamp', 'stale_timestamp', 'unknown_metric', 'invalid_unit',
    'invalid_value', 'invalid_quality', 'out_of_range', 'category_violation'
);

-- No foreign key to meters/assets/energy_sources: the entity is polymorphic, and a per-row FK
-- check would cost the hot insert path. The daemon only writes entities its registry knows, and
-- the delete triggers below keep the cascade.
CREATE TABLE measurements (
    entity_type entity_type_enum NOT NULL,
    entity_id   uuid NOT NULL,
    metric      text NOT NULL,
    ts          timestamptz NOT NULL,
    value       double precision NOT NULL,
    unit        text NOT NULL,
    quality     quality_enum NOT NULL DEFAULT 'good',
    received_at timestamptz NOT NULL DEFAULT now(),
    -- The only btree on the insert path: it makes redelivery idempotent and also serves
    -- "one entity, one metric, a time range, newest first" (a backward index scan).
    CONSTRAINT measurements_pkey PRIMARY KEY (entity_type, entity_id, metric, ts)
) PARTITION BY RANGE (ts);

-- Catches readings outside the monthly partitions, so a batch never fails for want of one.
-- ensure_measurement_partitions() moves such rows out when their month's partition is created.
CREATE TABLE measurements_default PARTITION OF measurements DEFAULT;

-- Monthly partitions named measurements_yYYYYmMM, covering [from_ts, to_ts]. Created detached and
-- then attached, because ATTACH takes a weaker lock on measurements than CREATE … PARTITION OF,
-- so concurrent COPYs keep flowing. Returns the number of partitions created.
CREATE FUNCTION ensure_measurement_partitions(from_ts timestamptz, to_ts timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month   date := date_trunc('month', from_ts AT TIME ZONE 'UTC')::date;
    last    date := date_trunc('month', to_ts AT TIME ZONE 'UTC')::date;
    part    text;
    lo      timestamptz;
    hi      timestamptz;
    created integer := 0;
BEGIN
    IF from_ts > to_ts THEN
        RAISE EXCEPTION 'from_ts % is after to_ts %', from_ts, to_ts;
    END IF;
    -- Two daemons starting at once must not race on the same CREATE TABLE.
    PERFORM pg_advisory_xact_lock(hashtext('enalysis.measurement_partitions'));
    WHILE month <= last LOOP
        part := format('measurements_y%sm%s', to_char(month, 'YYYY'), to_char(month, 'MM'));
        lo := month::timestamp AT TIME ZONE 'UTC';
        hi := (month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        IF to_regclass(part) IS NULL THEN
            -- CHECK constraints too: ATTACH requires every constraint of the parent.
            EXECUTE format('CREATE TABLE %I (LIKE measurements INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
            -- Rows that landed in the default partition for this month must move first, or
            -- ATTACH fails; the lock keeps new ones from arriving in between.
            LOCK TABLE measurements_default IN EXCLUSIVE MODE;
            EXECUTE format(
                'WITH moved AS (DELETE FROM measurements_default WHERE ts >= %L AND ts < %L RETURNING *)'
                ' INSERT INTO %I SELECT * FROM moved', lo, hi, part);
            EXECUTE format(
                'ALTER TABLE measurements ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                part, lo, hi);
            created := created + 1;
        END IF;
        month := month + interval '1 month';
    END LOOP;
    RETURN created;
END;
$$;

-- Drops monthly partitions that end at or before `before` (retention). Returns how many.
CREATE FUNCTION drop_measurement_partitions(before timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part    record;
    dropped integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('enalysis.measurement_partitions'));
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'measurements'::regclass
          AND c.relname ~ '^measurements_y[0-9]{4}m[0-9]{2}$'
          AND (to_date(substr(c.relname, 15, 4) || substr(c.relname, 20, 2), 'YYYYMM')
               + interval '1 month')::timestamp AT TIME ZONE 'UTC' <= before
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END;
$$;

-- Deleting an entity deletes its readings, as a foreign key with ON DELETE CASCADE would.
-- Statement-level with a transition table: one delete per statement, not one per row.
CREATE FUNCTION delete_entity_measurements() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM measurements m
    USING gone g
    WHERE m.entity_type = TG_ARGV[0]::entity_type_enum AND m.entity_id = g.id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER meters_delete_measurements AFTER DELETE ON meters
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION delete_entity_measurements('meter');
CREATE TRIGGER assets_delete_measurements AFTER DELETE ON assets
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION delete_entity_measurements('asset');
CREATE TRIGGER energy_sources_delete_measurements AFTER DELETE ON energy_sources
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION delete_entity_measurements('energy_source');

CREATE TABLE rejected_readings (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    received_at    timestamptz NOT NULL DEFAULT now(),
    topic          text NOT NULL,
    -- The message exactly as received (cut at the size limit for payload_too_large).
    payload        bytea NOT NULL,
    -- The same bytes as text when they are valid UTF-8 without NUL, for psql and the API.
    payload_text   text,
    -- Size of the message as received, in bytes.
    payload_size   integer NOT NULL CHECK (payload_size >= 0),
    -- sha256 of topic and payload: with seq, makes a redelivered message map onto the rows
    -- already stored, so redelivery stores nothing twice here either.
    message_digest bytea NOT NULL,
    -- Position of the reading in the message (0 for a whole-message rejection).
    seq            integer NOT NULL CHECK (seq >= 0),
    reason         rejection_reason_enum NOT NULL,
    detail         text NOT NULL,
    -- What is known of the reading; null when the message could not be read that far.
    entity_type    entity_type_enum,
    entity_id      uuid,
    metric         text,
    ts             timestamptz,
    CONSTRAINT rejected_readings_message_digest_seq_key UNIQUE (message_digest, seq)
);
CREATE INDEX rejected_readings_received_at_idx ON rejected_readings (received_at);
CREATE INDEX rejected_readings_reason_received_at_idx ON rejected_readings (reason, received_at);
