-- Of the (session, hash) links events make to events the ledger may lack (sink.queries.dead_lettered):
--   'letter': the stored dead letters holding one of the hashes (sink/sql/0013), per (hash, session);
--             a dead letter made before its headers named the session has producer_session '';
--   'stored': the links the ledger recorded stored (a dead letter never excuses those: the event was
--             stored, then deleted), a point lookup per pair (the by_session_hash projection, 0011).
SELECT 'letter' AS what, hash, producer_session, any(reason) AS reason, any(error) AS error,
       any(source_topic) AS source_topic, any(source_partition) AS source_partition,
       any(source_offset) AS source_offset
FROM dead_letters FINAL
WHERE hash IN {hashes:Array(String)}
GROUP BY hash, producer_session
UNION ALL
SELECT 'stored', hash, producer_session, '', '', '', -1, -1
FROM event_ledger WHERE (producer_session, hash) IN {links:Array(Tuple(String, String))}
