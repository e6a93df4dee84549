-- The policy events: what changes what a token may do (a user's roles and standing,
-- revoked tokens). Every command-api instance tails them by position to keep its
-- authorization cache current, and `GET /api/admin/revocations` lists the revocations
-- from them; this partial index keeps both a short index range scan however long the
-- log grows. The list must match `events::policy::EVENT_TYPES`.
CREATE INDEX events_policy_position ON events (position)
    WHERE event_type IN ('user.registered', 'user.role_changed', 'user.deactivated',
                         'user.tokens_revoked', 'token.revoked');
