-- The client's or model server's own id of a prediction's request (a KServe V2 request "id",
-- x-request-id, MLServer's ce-requestid), so an auditor holding only that id finds the prediction.
-- Traces written before this migration have it empty. The bloom filter skips granules without the
-- id: a lookup by it reads a few granules, not the table.
ALTER TABLE prediction_traces
    ADD COLUMN IF NOT EXISTS request_id Nullable(String) AFTER dataset_digests;
ALTER TABLE prediction_traces
    ADD INDEX IF NOT EXISTS prediction_traces_request_id request_id TYPE bloom_filter GRANULARITY 4;
