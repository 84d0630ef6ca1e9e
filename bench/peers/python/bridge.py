#!/usr/bin/env python3
"""MQTT -> PostgreSQL bridge in Python: the benchmark's "typical script" peer.

paho-mqtt 2.x (CallbackAPIVersion.VERSION2) subscribes with QoS 1; psycopg 3 writes batches with
COPY ... FROM STDIN (cursor.copy + write_row). The paho network thread only queues each message;
a writer thread parses, batches and flushes at BATCH_ROWS rows or FLUSH_MS after the first row of
a batch, whichever comes first, so the MQTT loop keeps reading while a COPY runs.

No validation beyond parsing: a reading lacking ts/metric/value/unit, or a message that is not
JSON, is counted and skipped; a row the database refuses fails its whole COPY batch (counted,
logged, not retried). paho acknowledges each QoS 1 message as soon as on_message returns, so
what is still buffered when the process dies is lost (the daemon acks after commit instead).

Environment: MQTT_HOST (127.0.0.1), MQTT_PORT (1883), MQTT_TOPIC (enalysis/v1/+/+/readings),
MQTT_CLIENT_ID (enalysis-peer-python), DATABASE_URL (required, postgres://...),
BATCH_ROWS (5000), FLUSH_MS (100), STATS_INTERVAL (5 seconds; 0 = off).

stdout carries exactly one line, `ready`, once the broker's SUBACK has arrived; everything else
(stats, errors, the final summary) goes to stderr. SIGTERM/SIGINT: stop reading, flush what is
held, exit 0.
"""

import json
import os
import queue
import signal
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
import psycopg

COPY_SQL = (
    "COPY measurements (entity_type, entity_id, metric, ts, value, unit, quality, received_at) "
    "FROM STDIN"
)
ENTITY_TYPES = {"meters": "meter", "assets": "asset", "energy-sources": "energy_source"}
UTC = timezone.utc
STOP = object()


def log(msg):
    sys.stderr.write(f"{datetime.now(UTC).isoformat(timespec='milliseconds')} bridge: {msg}\n")
    sys.stderr.flush()


def env_int(name, default):
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


class Stats:
    def __init__(self):
        self.messages = 0  # taken from the queue by the writer
        self.rows = 0  # committed
        self.failed_rows = 0  # in a COPY the database refused
        self.skipped_messages = 0  # unknown topic, not JSON
        self.skipped_readings = 0  # a required key missing or unusable


class Writer(threading.Thread):
    """Parses queued messages into rows and COPYs them in batches."""

    def __init__(self, inbox, database_url, batch_rows, flush_s, stats):
        super().__init__(name="writer", daemon=True)
        self.inbox = inbox
        self.database_url = database_url
        self.batch_rows = batch_rows
        self.flush_s = flush_s
        self.stats = stats
        self.topics = {}  # topic -> (entity_type, entity_id) or None
        self.conn = None

    def connect(self):
        while True:
            try:
                self.conn = psycopg.connect(self.database_url, autocommit=True)
                return
            except psycopg.Error as e:
                log(f"database connect failed: {e}; retrying in 1 s")
                time.sleep(1)

    def entity(self, topic):
        hit = self.topics.get(topic, False)
        if hit is not False:
            return hit
        parts = topic.split("/")
        hit = None
        if len(parts) >= 3 and parts[-1] == "readings" and parts[-3] in ENTITY_TYPES:
            try:
                hit = (ENTITY_TYPES[parts[-3]], uuid.UUID(parts[-2]))
            except ValueError:
                hit = None
        if len(self.topics) > 100_000:
            self.topics.clear()
        self.topics[topic] = hit
        return hit

    def parse(self, topic, payload, received, rows):
        ent = self.entity(topic)
        if ent is None:
            self.stats.skipped_messages += 1
            return
        try:
            doc = json.loads(payload)
        except ValueError:
            self.stats.skipped_messages += 1
            return
        entity_type, entity_id = ent
        received_at = datetime.fromtimestamp(received, UTC)
        for r in doc if isinstance(doc, list) else (doc,):
            try:
                ts = r["ts"]
                if isinstance(ts, str):
                    pass  # RFC 3339: PostgreSQL parses it
                elif isinstance(ts, (int, float)) and not isinstance(ts, bool):
                    ts = datetime.fromtimestamp(ts / 1000, UTC)
                else:
                    raise TypeError("ts")
                rows.append(
                    (
                        entity_type,
                        entity_id,
                        r["metric"],
                        ts,
                        float(r["value"]),
                        r["unit"],
                        r.get("quality", "good"),
                        received_at,
                    )
                )
            except (KeyError, TypeError, ValueError, OverflowError):
                self.stats.skipped_readings += 1

    def flush(self, rows):
        if not rows:
            return
        while True:
            if self.conn is None or self.conn.closed:
                self.connect()
            try:
                with self.conn.cursor() as cur:
                    with cur.copy(COPY_SQL) as copy:
                        for row in rows:
                            copy.write_row(row)
                self.stats.rows += len(rows)
                return
            except psycopg.OperationalError as e:
                # Lost connection: reconnect and send the batch again.
                log(f"COPY of {len(rows)} rows failed ({e}); reconnecting")
                try:
                    self.conn.close()
                except psycopg.Error:
                    pass
                self.conn = None
                time.sleep(0.5)
            except psycopg.Error as e:
                # A row the database refuses (duplicate key, bad enum label, ...): the batch is
                # lost, as it would be in a script that does no validation.
                self.stats.failed_rows += len(rows)
                log(f"COPY of {len(rows)} rows refused: {str(e).splitlines()[0]}")
                return

    def run(self):
        self.connect()
        inbox, stats = self.inbox, self.stats
        rows = []
        deadline = None
        stopping = False
        while not stopping:
            try:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                item = inbox.get(timeout=timeout)
            except queue.Empty:
                item = None
            while item is not None:
                if item is STOP:
                    stopping = True
                    break
                stats.messages += 1
                self.parse(item[0], item[1], item[2], rows)
                if deadline is None and rows:
                    deadline = time.monotonic() + self.flush_s
                if len(rows) >= self.batch_rows:
                    break
                try:
                    item = inbox.get_nowait()
                except queue.Empty:
                    item = None
            if stopping or len(rows) >= self.batch_rows or (
                deadline is not None and time.monotonic() >= deadline
            ):
                self.flush(rows)
                rows = []
                deadline = None
        if self.conn is not None:
            self.conn.close()


def main():
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        log("DATABASE_URL is required")
        return 2
    host = os.environ.get("MQTT_HOST") or "127.0.0.1"
    port = env_int("MQTT_PORT", 1883)
    topic = os.environ.get("MQTT_TOPIC") or "enalysis/v1/+/+/readings"
    client_id = os.environ.get("MQTT_CLIENT_ID") or "enalysis-peer-python"
    batch_rows = env_int("BATCH_ROWS", 5000)
    flush_s = env_int("FLUSH_MS", 100) / 1000.0
    stats_interval = env_int("STATS_INTERVAL", 5)

    stats = Stats()
    inbox = queue.SimpleQueue()
    stop = threading.Event()
    ready = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log(f"MQTT connect refused: {reason_code}")
            return
        log(f"connected to {host}:{port} as {client_id}; subscribing to {topic} (QoS 1)")
        client.subscribe(topic, qos=1)

    def on_subscribe(client, userdata, mid, reason_code_list, properties):
        if any(rc.is_failure for rc in reason_code_list):
            log(f"subscription refused: {reason_code_list}")
            stop.set()
            return
        if not ready.is_set():
            ready.set()
            sys.stdout.write("ready\n")
            sys.stdout.flush()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        if not stop.is_set():
            log(f"MQTT disconnected ({reason_code}); paho reconnects")

    def on_message(client, userdata, msg):
        inbox.put((msg.topic, msg.payload, time.time()))

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    client.reconnect_delay_set(min_delay=1, max_delay=5)

    writer = Writer(inbox, database_url, batch_rows, flush_s, stats)
    writer.start()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    client.connect_async(host, port, keepalive=60)
    client.loop_start()
    # A short wait: the signal may be delivered to another thread, and then the handler only
    # runs when the main thread wakes up.
    last = (time.monotonic(), 0)
    while not stop.wait(timeout=0.1):
        now = time.monotonic()
        if stats_interval and now - last[0] >= stats_interval:
            rate = (stats.rows - last[1]) / (now - last[0])
            last = (now, stats.rows)
            log(
                f"messages={stats.messages} rows={stats.rows} rows_per_s={rate:.0f} "
                f"queued={inbox.qsize()} failed_rows={stats.failed_rows}"
            )

    log("stopping: disconnecting from the broker and flushing")
    client.disconnect()
    client.loop_stop()
    inbox.put(STOP)
    writer.join()
    log(
        f"stopped: messages={stats.messages} rows={stats.rows} failed_rows={stats.failed_rows} "
        f"skipped_messages={stats.skipped_messages} skipped_readings={stats.skipped_readings}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
