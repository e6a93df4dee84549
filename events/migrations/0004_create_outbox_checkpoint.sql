-- The log is the outbox: the publisher's checkpoint is the last position it saw
-- acknowledged by JetStream. `republish_from`, when set by an operator, asks the active
-- publisher to publish the log again from that position (e.g. after JetStream lost data).
CREATE TABLE outbox_checkpoint (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    position       bigint  NOT NULL DEFAULT 0 CHECK (position >= 0),
    republish_from bigint           CHECK (republish_from > 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO outbox_checkpoint DEFAULT VALUES;

-- Appends also wake the publisher. NOTIFY is only a hint (lost while nobody listens);
-- the publisher polls as well. It is sent from the statement trigger, so every appender
-- wakes it without an extra round trip, and Postgres delivers it at commit.
CREATE OR REPLACE FUNCTION keel_serialize_appends() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM keel_lock_appends();
    PERFORM pg_notify('keel_appended', '');
    RETURN NULL;
END;
$$;
