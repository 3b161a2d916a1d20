-- Which migration files have been applied, with the SHA-256 of the text that was applied.
CREATE TABLE IF NOT EXISTS schema_migrations
(
    name       String,
    sha256     String,
    applied_at DateTime64(6, 'UTC') DEFAULT now64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY name;
