-- What an access-log row of /v1/sql read: the statement as sent (whole, up to the 100,000 characters
-- a statement may have), its SHA-256 (over the whole body, for longer ones), and the tables it read
-- as the engine resolved them. Rows of other requests, and rows written before this migration, have
-- them empty.
ALTER TABLE access_log
    ADD COLUMN IF NOT EXISTS statement String,
    ADD COLUMN IF NOT EXISTS statement_sha256 String,
    ADD COLUMN IF NOT EXISTS tables Array(String);
