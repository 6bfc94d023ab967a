-- OpenID tokens (client API POST /user/{userId}/openid/request_token): a
-- user hands one to a third-party service, which exchanges it at the
-- federation API's GET /openid/userinfo for the user's id. They are good
-- for nothing else and live for an hour.
CREATE TABLE openid_tokens (
    -- SHA-256 of the token: a stolen table does not yield usable tokens.
    token_hash {{BYTES}} PRIMARY KEY,
    -- The owner's localpart (a deactivated owner's tokens stop working).
    localpart TEXT NOT NULL,
    -- The owner's full user id, the "sub" that userinfo answers.
    user_id TEXT NOT NULL,
    -- When the token stops working, in milliseconds since the epoch.
    expires_ts BIGINT NOT NULL
);
-- Expired tokens are deleted as new ones are issued.
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);
