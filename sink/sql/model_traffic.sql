-- The model page (sink.modelpage.overview), step 2: predictions per version and window, from the
-- stored traces. prediction_index (a view of prediction_traces) is read by its ORDER BY prefix,
-- (model_name, model_version, toDate(event_time)). A prediction is counted once, in the window of
-- its first trace revision (a completed or labelled revision comes later and is the same
-- prediction). Windows are window_s seconds long, aligned to the Unix epoch; oldest first.
SELECT
    toDateTime64(toStartOfInterval(first_seen, INTERVAL {window_s:UInt32} SECOND), 6, 'UTC') AS window_start,
    model_version                                                                      AS version,
    count()                                                                            AS predictions
FROM
(
    SELECT model_version, prediction_id, min(event_time) AS first_seen
    FROM prediction_index
    WHERE model_name = {model:String}
      AND event_time >= {since:DateTime64(6, 'UTC')} AND event_time < {until:DateTime64(6, 'UTC')}
    GROUP BY model_version, prediction_id
)
GROUP BY window_start, version
ORDER BY window_start, version
LIMIT {limit:UInt32}
