-- OpenTelemetry trace ids of inference requests, so `provline trace --otel-trace-id` finds a prediction
-- by the trace id a tracing backend shows. The column is derived from the stored payload's traceparent
-- (the same rule as provline.schemas.tracecontext.parse_traceparent: lower-case hex, version not ff,
-- non-zero ids), empty when the request had none or the capture policy redacted it. traceparent_form says
-- which: 'w3c', 'hash' (keyed hash), 'mask', 'none', or 'other'. Parts written before this migration
-- compute both on read; the bloom filter covers parts written (or merged) after it.
ALTER TABLE inference_requests
    ADD COLUMN IF NOT EXISTS otel_trace_id String MATERIALIZED if(
        match(JSONExtractString(payload, 'traceparent'),
              '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$')
        AND substring(JSONExtractString(payload, 'traceparent'), 1, 2) != 'ff'
        AND NOT (substring(JSONExtractString(payload, 'traceparent'), 1, 2) = '00'
                 AND length(JSONExtractString(payload, 'traceparent')) != 55)
        AND substring(JSONExtractString(payload, 'traceparent'), 4, 32) != repeat('0', 32)
        AND substring(JSONExtractString(payload, 'traceparent'), 37, 16) != repeat('0', 16),
        substring(JSONExtractString(payload, 'traceparent'), 4, 32), '');
ALTER TABLE inference_requests
    ADD COLUMN IF NOT EXISTS traceparent_form LowCardinality(String) MATERIALIZED multiIf(
        JSONExtractString(payload, 'traceparent') = '', 'none',
        startsWith(JSONExtractString(payload, 'traceparent'), 'hmac-sha256:'), 'hash',
        JSONExtractString(payload, 'traceparent') = '****', 'mask',
        match(JSONExtractString(payload, 'traceparent'), '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}'), 'w3c',
        'other');
ALTER TABLE inference_requests
    ADD INDEX IF NOT EXISTS inference_requests_otel_trace_id otel_trace_id TYPE bloom_filter GRANULARITY 4;
