-- The complete trace (issue 18) shows, for every record, whether the event it links to (prev_hash) is
-- recorded in its session. The ledger is sorted by event id; this projection sorts its links by
-- (producer_session, hash), so that check is a point lookup, not a scan of every event ever stored.
ALTER TABLE event_ledger
    ADD PROJECTION IF NOT EXISTS by_session_hash (SELECT producer_session, hash, event_id ORDER BY producer_session, hash);
ALTER TABLE event_ledger MATERIALIZE PROJECTION by_session_hash SETTINGS mutations_sync = 2;
