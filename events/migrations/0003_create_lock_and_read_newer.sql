-- One round trip for an appender that decides on cached state: take the append lock,
-- then return the events of the given streams that are newer than the versions the
-- caller already knows, in position order. The lateral subquery (fenced by OFFSET 0)
-- keeps each stream one index range scan on (stream_id, version) in generic plans too.
CREATE FUNCTION keel_lock_and_read_newer(stream_ids text[], known_versions bigint[])
RETURNS SETOF events LANGUAGE plpgsql AS $$
BEGIN
    PERFORM keel_lock_appends();
    RETURN QUERY
        SELECT e.*
        FROM unnest(stream_ids, known_versions) AS k(stream_id, version)
        CROSS JOIN LATERAL (
            SELECT * FROM events
            WHERE events.stream_id = k.stream_id AND events.version > k.version
            ORDER BY events.version OFFSET 0
        ) e
        ORDER BY e.position;
END;
$$;
