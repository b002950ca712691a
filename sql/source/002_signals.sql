-- Debezium's signalling table (signal.data.collection in connect/postgres-source.json).
-- `streamrag connect snapshot` inserts execute-snapshot signals here, and the connector
-- writes the watermarks of its incremental snapshots here (insert_delete: one row per
-- chunk, deleted when the chunk's window closes). Columns, names and order are the ones
-- Debezium requires: id, type, data.
-- Idempotent like 001: `streamrag migrate` applies it once.

CREATE TABLE IF NOT EXISTS kb.debezium_signal (
    id   text PRIMARY KEY,  -- a UUID per signal
    type text NOT NULL,     -- execute-snapshot, stop-snapshot, ...
    data text               -- the signal's JSON parameters
);

-- With pgoutput the connector sees only what the publication carries, signals and
-- watermarks included: the table must be in streamrag_pub (autocreate is disabled). Its
-- change events never reach Kafka: the connector's filter transform drops them.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_publication_tables
        WHERE pubname = 'streamrag_pub' AND schemaname = 'kb' AND tablename = 'debezium_signal'
    ) THEN
        ALTER PUBLICATION streamrag_pub ADD TABLE kb.debezium_signal;
    END IF;
END $$;
