-- The read models. Each projection lives in a schema of its own (`rm_<name>`) that holds
-- its tables *and* its bookkeeping: the checkpoint, the version applied per stream
-- (exactly-once, in-order effects), and its dead letters. A rebuild fills a fresh copy
-- (`rm_<name>_next`, made by `keel_create_read_model`) from the log and swaps it in by
-- renaming the schemas in one transaction, so the model and its bookkeeping change
-- together and readers never see a half-built model.
CREATE FUNCTION keel_create_read_model(projection text, target text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    -- A user's profile, roles, standing and stream version: the `users` model, and the
    -- dashboard's own copy of it.
    users_table text := $f$
        CREATE TABLE %1$I.users (
            id      uuid    PRIMARY KEY,
            email   text    NOT NULL,
            name    text    NOT NULL,
            roles   text[]  NOT NULL,
            active  boolean NOT NULL,
            version bigint  NOT NULL
        );
    $f$;
BEGIN
    EXECUTE format('CREATE SCHEMA %I', target);
    EXECUTE format($f$
        -- Every relevant event at or below `position` is applied or dead-lettered.
        CREATE TABLE %1$I.checkpoint (
            id         boolean PRIMARY KEY DEFAULT true CHECK (id),
            position   bigint  NOT NULL DEFAULT 0,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        INSERT INTO %1$I.checkpoint DEFAULT VALUES;
        -- The last version of each stream this projection applied (or dead-lettered).
        CREATE TABLE %1$I.applied (
            stream_id text   PRIMARY KEY,
            version   bigint NOT NULL
        );
        CREATE TABLE %1$I.dead_letters (
            event_id   uuid        PRIMARY KEY,
            position   bigint      NOT NULL,
            stream_id  text        NOT NULL,
            version    bigint      NOT NULL,
            event_type text        NOT NULL,
            reason     text        NOT NULL,
            failed_at  timestamptz NOT NULL DEFAULT now()
        );
    $f$, target);
    CASE projection
    WHEN 'users' THEN
        EXECUTE format(users_table, target);
    WHEN 'authors' THEN
        EXECUTE format($f$
            CREATE TABLE %1$I.authors (
                id         uuid    PRIMARY KEY,
                name       text    NOT NULL,
                active     boolean NOT NULL,
                post_count integer NOT NULL DEFAULT 0 CHECK (post_count >= 0),
                version    bigint  NOT NULL
            );
            -- Published, not deleted posts: what `post_count` counts.
            CREATE TABLE %1$I.published (
                post_id   uuid PRIMARY KEY,
                author_id uuid NOT NULL
            );
            CREATE INDEX ON %1$I.published (author_id);
        $f$, target);
    WHEN 'posts' THEN
        EXECUTE format($f$
            CREATE TABLE %1$I.posts (
                id            uuid        PRIMARY KEY,
                author_id     uuid        NOT NULL,
                title         text        NOT NULL,
                body          text        NOT NULL,
                status        text        NOT NULL CHECK (status IN ('draft', 'published', 'deleted')),
                created_at    timestamptz NOT NULL,
                published_at  timestamptz,
                comment_count integer     NOT NULL DEFAULT 0 CHECK (comment_count >= 0),
                like_count    integer     NOT NULL DEFAULT 0 CHECK (like_count >= 0),
                version       bigint      NOT NULL
            );
            CREATE INDEX ON %1$I.posts (published_at DESC, id DESC) WHERE status = 'published';
            CREATE INDEX ON %1$I.posts (author_id, published_at DESC, id DESC) WHERE status = 'published';
            CREATE TABLE %1$I.comments (
                id         uuid        PRIMARY KEY,
                post_id    uuid        NOT NULL,
                author_id  uuid        NOT NULL,
                body       text        NOT NULL,
                created_at timestamptz NOT NULL,
                position   bigint      NOT NULL
            );
            CREATE INDEX ON %1$I.comments (post_id, position);
        $f$, target);
    WHEN 'dashboard' THEN
        EXECUTE format(users_table, target);
        EXECUTE format($f$
            CREATE TABLE %1$I.posts (
                id         uuid    PRIMARY KEY,
                author_id  uuid    NOT NULL,
                title      text    NOT NULL,
                status     text    NOT NULL CHECK (status IN ('draft', 'published', 'deleted')),
                like_count integer NOT NULL DEFAULT 0 CHECK (like_count >= 0),
                position   bigint  NOT NULL
            );
            CREATE INDEX ON %1$I.posts (author_id, position DESC);
            -- Comments by others on a user's posts (the recipient is the post's author).
            CREATE TABLE %1$I.comments (
                id         uuid        PRIMARY KEY,
                recipient  uuid        NOT NULL,
                post_id    uuid        NOT NULL,
                author_id  uuid        NOT NULL,
                body       text        NOT NULL,
                created_at timestamptz NOT NULL,
                position   bigint      NOT NULL
            );
            CREATE INDEX ON %1$I.comments (recipient, position DESC);
            CREATE INDEX ON %1$I.comments (author_id);
        $f$, target);
    ELSE
        RAISE EXCEPTION 'unknown projection %', projection USING ERRCODE = 'invalid_parameter_value';
    END CASE;
END;
$$;

SELECT keel_create_read_model('users', 'rm_users');
SELECT keel_create_read_model('authors', 'rm_authors');
SELECT keel_create_read_model('posts', 'rm_posts');
SELECT keel_create_read_model('dashboard', 'rm_dashboard');
