-- A rejected message's payload is stored once, however many of its readings were rejected.
--
-- Before this, every rejected reading's row carried the whole payload (and a text copy): one
-- 250 KiB array of 3,240 rejected readings became a single 1.6 GB statement, which PostgreSQL
-- refuses (its protocol messages stop at 1 GB), and the message wedged ingestion for good.
-- Now:
--   rejected_messages      one row per message: topic, the exact payload, its text, its size;
--   rejected_reading_runs  one row per rejected reading, or per run of consecutive readings of a
--                          message rejected alike (`[1,1,1,…]` is one row, not 130,000);
--   rejected_readings      a view with the columns of CONTRACT.md §2, one row per reading.
-- What a message costs to keep is then bounded by a small multiple of its own size.

CREATE TABLE rejected_messages (
    -- sha256 of topic, a NUL byte and the payload: the same message redelivered maps onto the
    -- row already stored, so redelivery stores nothing twice.
    message_digest bytea PRIMARY KEY CHECK (octet_length(message_digest) = 32),
    received_at    timestamptz NOT NULL DEFAULT now(),
    topic          text NOT NULL,
    -- The message exactly as received (cut at ingest.max_payload_bytes for payload_too_large).
    payload        bytea NOT NULL,
    -- The same bytes as text when they are valid UTF-8 without NUL, for psql and the API.
    payload_text   text,
    -- Size of the message as received, in bytes.
    payload_size   integer NOT NULL CHECK (payload_size >= 0)
);
CREATE INDEX rejected_messages_received_at_idx ON rejected_messages (received_at);

CREATE TABLE rejected_reading_runs (
    message_digest bytea NOT NULL REFERENCES rejected_messages ON DELETE CASCADE,
    -- Position of the run's first reading in the message (0 for a whole-message rejection);
    -- the run covers seq .. seq + count - 1.
    seq            integer NOT NULL CHECK (seq >= 0),
    count          integer NOT NULL DEFAULT 1 CHECK (count >= 1),
    -- Array index of the first reading's element (null when the payload is not an array);
    -- advances with seq along the run.
    element        integer CHECK (element >= 0),
    -- Copied from the message, so "rejections of this reason since" is one index range.
    received_at    timestamptz NOT NULL,
    reason         rejection_reason_enum NOT NULL,
    -- Without the element's index, which the view puts in front ("element 3: …").
    detail         text NOT NULL,
    -- What is known of the reading; null when the message could not be read that far.
    entity_type    entity_type_enum,
    entity_id      uuid,
    metric         text,
    ts             timestamptz,
    PRIMARY KEY (message_digest, seq)
);
CREATE INDEX rejected_reading_runs_received_at_idx ON rejected_reading_runs (received_at);
CREATE INDEX rejected_reading_runs_reason_received_at_idx
    ON rejected_reading_runs (reason, received_at);

-- Rows of the old table move over: one message row per digest, one run of 1 per row.
INSERT INTO rejected_messages (message_digest, received_at, topic, payload, payload_text,
                               payload_size)
SELECT DISTINCT ON (message_digest) message_digest, received_at, topic, payload, payload_text,
       payload_size
FROM rejected_readings
WHERE octet_length(message_digest) = 32
ORDER BY message_digest, received_at;

INSERT INTO rejected_reading_runs (message_digest, seq, count, element, received_at, reason,
                                   detail, entity_type, entity_id, metric, ts)
SELECT r.message_digest, r.seq, 1, NULL, r.received_at, r.reason, r.detail, r.entity_type,
       r.entity_id, r.metric, r.ts
FROM rejected_readings r
JOIN rejected_messages USING (message_digest);

DROP TABLE rejected_readings;

-- CONTRACT.md §2, one row per rejected reading (or message). `id` names the reading: the
-- message's digest in hex and the reading's seq.
CREATE VIEW rejected_readings AS
SELECT encode(r.message_digest, 'hex') || ':' || (r.seq + k) AS id,
       r.received_at,
       m.topic,
       m.payload,
       m.payload_text,
       m.payload_size,
       r.message_digest,
       r.seq + k AS seq,
       r.reason,
       CASE WHEN r.element IS NULL THEN r.detail
            ELSE 'element ' || (r.element + k) || ': ' || r.detail END AS detail,
       r.entity_type,
       r.entity_id,
       r.metric,
       r.ts
FROM rejected_reading_runs r
JOIN rejected_messages m USING (message_digest)
CROSS JOIN LATERAL generate_series(0, r.count - 1) AS k;

COMMENT ON VIEW rejected_readings IS
    'Every reading or message not stored in measurements, with its reason (CONTRACT.md §2).';
