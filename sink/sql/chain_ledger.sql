-- Step 2 of the complete trace (sink.queries.chain_ledger): what the ledger (sink/sql/0005, 0007)
-- recorded of the chain's records, and whether the event each one links to is recorded in its session.
--   'self': every ledger row of the records' ids (ORDER BY event_id prefix): the hash and contents
--           each id was stored with, however often it was stored, and when;
--   'link': the ledger rows of the (session, hash) pairs the records link to (prev_hash), and of the
--           heads their sessions' anchors signed, read through the ledger's by_session_hash projection
--           (sink/sql/0011), a point lookup per pair.
SELECT 'self' AS what, event_id, hash, producer_session, content_digest, content_sha256, inserted
FROM event_ledger WHERE event_id IN {event_ids:Array(String)}
UNION ALL
-- (no other column: the projection holds only these, and reading one more scans the ledger)
SELECT 'link', event_id, hash, producer_session, '', '', toDateTime64(0, 6, 'UTC')
FROM event_ledger WHERE (producer_session, hash) IN {links:Array(Tuple(String, String))}
UNION ALL
-- 'parts': the registry tables' active parts (sink.queries.REGISTRY_TABLES), ChainCache's version, read
-- from part metadata in the same round trip (no data is read).
SELECT 'parts', table, toString(count()), toString(sum(rows)), toString(max(data_version)),
       toString(max(modification_time)), toDateTime64(0, 6, 'UTC')
FROM system.parts
WHERE database = currentDatabase() AND active AND table IN {tables:Array(String)}
GROUP BY table
