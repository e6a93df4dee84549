-- Partition ownership for consumers that run as several instances sharing P partitions
-- (`events::lease`): who is alive, and which instance owns each partition, with a
-- fencing epoch that grows whenever a partition changes hands.
CREATE TABLE consumer_members (
    consumer_group text NOT NULL,
    member text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (consumer_group, member)
);

CREATE TABLE partition_leases (
    consumer_group text NOT NULL,
    partition integer NOT NULL CHECK (partition >= 0),
    owner text,
    epoch bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (consumer_group, partition)
);
