-- Step 1 of the complete trace (sink.queries.complete_trace): every stored PredictionTrace,
-- InferenceRequest, InferenceResponse and Feedback of one prediction, with the bytes each was read
-- from Kafka as. The tables' ORDER BY starts with prediction_id: each branch reads one granule.
-- The first four columns are trace.sql's (sink.queries.trace reads them as it reads that file's);
-- payload_digest is the ledger's digest of the stored payload ({content}: sink.ingest.CONTENT_OF_PAYLOAD),
-- compared with what the ledger recorded at insert, for the tables whose payload an answer reads; of
-- requests and responses the answer reads body_sha256, compared with the bytes' own (reading their
-- payloads, which carry the bodies, would double the read). As in trace.sql: no FINAL, no ORDER BY.
SELECT 'trace' AS source, event_id, event_time, payload AS payload_or_sha256, 'PredictionTrace' AS kind,
       hash, prev_hash, producer_session, producer_name, raw, {content} AS payload_digest
FROM prediction_traces
WHERE prediction_id = {prediction_id:String}
UNION ALL
SELECT 'request', event_id, event_time, body_sha256, 'InferenceRequest', hash, prev_hash, producer_session,
       producer_name, raw, ''
FROM inference_requests
WHERE prediction_id = {prediction_id:String}
UNION ALL
SELECT 'response', event_id, event_time, body_sha256, 'InferenceResponse', hash, prev_hash, producer_session,
       producer_name, raw, ''
FROM inference_responses
WHERE prediction_id = {prediction_id:String}
UNION ALL
SELECT 'feedback', event_id, event_time, payload, 'Feedback', hash, prev_hash, producer_session, producer_name, raw,
       {content}
FROM feedback
WHERE prediction_id = {prediction_id:String}
