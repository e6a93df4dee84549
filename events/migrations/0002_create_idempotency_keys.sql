-- Responses to commands sent with an `Idempotency-Key`, scoped to the principal.
-- Written in the same transaction as the command's events; kept 24 hours.
CREATE TABLE idempotency_keys (
    principal    uuid        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    status       smallint    NOT NULL,
    location     text,
    response     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);

CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
