-- The event log: append-only, one row per domain event, and the outbox of the bus.
--
-- `position` is the global order. Positions are handed out by an identity sequence, but
-- every INSERT first takes one transaction-scoped advisory lock (trigger below), so
-- appending transactions run one at a time from position assignment to commit: a reader
-- that has seen position N can never later see a newly committed event below N. See
-- `events::event_log` for why this design and what it costs.
CREATE TABLE events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       uuid        NOT NULL,
    stream_id      text        NOT NULL,
    version        bigint      NOT NULL CHECK (version > 0),
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL CHECK (schema_version > 0),
    data           jsonb       NOT NULL,
    metadata       jsonb       NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);

-- The append lock. Held until the transaction ends, which releases it only after the
-- commit became visible. Appenders that read a stream's version before writing take it
-- first themselves; the trigger makes every other INSERT take it too.
CREATE FUNCTION keel_lock_appends() RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(7261530813950017);
$$;

CREATE FUNCTION keel_serialize_appends() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM keel_lock_appends();
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_serialize_appends
    BEFORE INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION keel_serialize_appends();

-- Append-only: history is never rewritten.
CREATE FUNCTION keel_refuse_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only' USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION keel_refuse_rewrite();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION keel_refuse_rewrite();
