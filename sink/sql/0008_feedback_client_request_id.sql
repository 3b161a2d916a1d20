-- Feedback v2 names its prediction by provline's prediction id or by the client's own request id.
-- A Feedback stored with only the client's id has prediction_id '' and client_request_id set; the
-- sink resolves it (sink/feedback.py) and publishes one Feedback per prediction that request made,
-- with both ids, which is stored as any other. Feedback stored before this migration has it empty.
ALTER TABLE feedback
    ADD COLUMN IF NOT EXISTS client_request_id Nullable(String) AFTER source;
ALTER TABLE feedback
    ADD INDEX IF NOT EXISTS feedback_client_request_id client_request_id TYPE bloom_filter GRANULARITY 4;
