-- Accounts, devices and the tokens that authenticate them.

CREATE TABLE accounts (
    localpart TEXT PRIMARY KEY,
    -- bcrypt hash; NULL when the account cannot log in with a password (guests).
    password_hash TEXT,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    is_guest BOOLEAN NOT NULL DEFAULT FALSE,
    -- Synapse's user_type ('bot', 'support'), from shared-secret registration.
    user_type TEXT,
    deactivated BOOLEAN NOT NULL DEFAULT FALSE,
    created_ts BIGINT NOT NULL
);

CREATE TABLE devices (
    localpart TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    -- Last use, written at most once a few minutes per device (see userapi).
    last_seen_ip TEXT,
    last_seen_ts BIGINT,
    last_seen_user_agent TEXT,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (localpart, device_id)
);

CREATE TABLE access_tokens (
    -- SHA-256 of the token: a stolen table does not yield usable tokens.
    token_hash {{BYTES}} PRIMARY KEY,
    localpart TEXT NOT NULL,
    device_id TEXT NOT NULL,
    -- Milliseconds since the epoch; NULL for tokens that never expire.
    expires_ts BIGINT,
    created_ts BIGINT NOT NULL
);
CREATE INDEX access_tokens_device ON access_tokens (localpart, device_id);

CREATE TABLE refresh_tokens (
    token_hash {{BYTES}} PRIMARY KEY,
    localpart TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (localpart, device_id);

-- One-time tokens for m.login.token (POST /login/get_token).
CREATE TABLE login_tokens (
    token_hash {{BYTES}} PRIMARY KEY,
    localpart TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);

-- Tokens for m.login.registration_token.
CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY,
    -- NULL: unlimited.
    uses_allowed INTEGER,
    -- Registrations that used the token and finished.
    completed INTEGER NOT NULL DEFAULT 0,
    -- Milliseconds since the epoch; NULL: never expires.
    expiry_ts BIGINT,
    created_ts BIGINT NOT NULL
);

-- User-interactive auth sessions, in the database so that any process of a
-- scaled-out server can continue a session another one started.
CREATE TABLE uia_sessions (
    session_id TEXT PRIMARY KEY,
    -- JSON list of completed stage types.
    completed TEXT NOT NULL,
    -- JSON object of values stages leave for the endpoint (e.g. the
    -- registration token used).
    results TEXT NOT NULL,
    -- The request (method and path) the session is bound to.
    request TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);

-- Nonces handed out by GET /_synapse/admin/v1/register, each good once.
CREATE TABLE registration_nonces (
    nonce TEXT PRIMARY KEY,
    created_ts BIGINT NOT NULL
);

-- Profile fields: displayname, avatar_url and the custom fields of spec
-- v1.16, each value as JSON.
CREATE TABLE profile_fields (
    localpart TEXT NOT NULL,
    field TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (localpart, field)
);

-- Global (room_id '') and per-room account data.
CREATE TABLE account_data (
    localpart TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (localpart, room_id, type)
);

CREATE TABLE filters (
    localpart TEXT NOT NULL,
    filter_id {{SERIAL}},
    filter TEXT NOT NULL
);
CREATE INDEX filters_localpart ON filters (localpart);
