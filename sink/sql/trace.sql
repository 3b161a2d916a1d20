-- Step 1 of a trace (sink.queries.trace): every stored PredictionTrace, InferenceRequest and
-- Feedback of one prediction. The tables' ORDER BY starts with prediction_id, so each branch is a
-- point lookup of one granule however many predictions are stored.
--
-- No FINAL, no ORDER BY: a prediction has a handful of rows (a trace per join attempt, the
-- request, redelivered copies not yet merged away), and the caller keeps the newest of each
-- source by (event_time, event_id). A redelivered event is the same row again, so duplicates
-- cannot change which is newest. Sorting in the engine costs more than the whole read, and so
-- does each extra column: the model and run keys are read from the newest trace's payload.
SELECT 'trace' AS source, event_id, event_time, payload AS payload_or_sha256
FROM prediction_traces
WHERE prediction_id = {prediction_id:String}
UNION ALL
SELECT 'request', event_id, event_time, body_sha256
FROM inference_requests
WHERE prediction_id = {prediction_id:String}
UNION ALL
SELECT 'feedback', event_id, event_time, payload
FROM feedback
WHERE prediction_id = {prediction_id:String}
