-- name: stored_offsets
SELECT topic, "partition", next_offset FROM offsets;

-- name: stored_marks
-- Per partition: the next offset and the last record read before it (see schema_61).
SELECT topic, "partition", next_offset, last_ts_ms, last_crc FROM offsets
WHERE last_crc IS NOT NULL;

-- name: upsert_offsets
INSERT INTO offsets (topic, "partition", next_offset, last_ts_ms, last_crc)
SELECT topic, "partition", next_offset, last_ts_ms, last_crc FROM batch_offsets
ON CONFLICT (topic, "partition") DO UPDATE
SET next_offset = greatest(offsets.next_offset, excluded.next_offset),
    last_ts_ms = CASE WHEN excluded.next_offset >= offsets.next_offset
                      THEN excluded.last_ts_ms ELSE offsets.last_ts_ms END,
    last_crc = CASE WHEN excluded.next_offset >= offsets.next_offset
                    THEN excluded.last_crc ELSE offsets.last_crc END,
    updated_at = now();

-- name: insert_requests
INSERT INTO requests BY NAME SELECT * FROM batch_requests;

-- name: insert_requests_ignore_known
INSERT OR IGNORE INTO requests BY NAME SELECT * FROM batch_requests;

-- name: insert_samples
INSERT INTO samples BY NAME SELECT * FROM batch_samples;

-- name: insert_samples_ignore_known
INSERT OR IGNORE INTO samples BY NAME SELECT * FROM batch_samples;

-- name: insert_skipped
INSERT INTO skipped BY NAME SELECT * FROM batch_skipped;

-- name: insert_rejected
INSERT INTO rejected BY NAME SELECT * FROM batch_rejected;

-- name: hold_otlp_pending
INSERT INTO otlp_pending
SELECT key, seq, kind, topic, "partition", "offset", first_seen_ms, payload
FROM batch_otlp_join WHERE op = 'hold';

-- name: release_otlp_pending
DELETE FROM otlp_pending p USING batch_otlp_join d
WHERE d.op = 'done' AND p.key = d.key AND p.seq < d.seq;

-- name: otlp_pending_rows
SELECT key, seq, kind, topic, "partition", "offset", first_seen_ms, payload::VARCHAR
FROM otlp_pending ORDER BY seq;

-- name: pending_samples
SELECT sample_id, stratum, frontier_model, messages, params, tags, response_text,
       frontier_cost_usd, input_tokens, scorer
FROM samples
WHERE status = 'pending'
  -- the runner's in-flight samples: still pending here until their results are written
  AND sample_id NOT IN (SELECT unnest($exclude::VARCHAR[]))
ORDER BY created_at, sample_id
LIMIT $limit;

-- name: insert_router_scores
INSERT INTO router_scores BY NAME SELECT * FROM batch_router_scores;

-- name: insert_router_scores_ignore_known
INSERT OR IGNORE INTO router_scores BY NAME SELECT * FROM batch_router_scores;

-- name: insert_shadow_calls
INSERT INTO shadow_calls BY NAME SELECT * FROM batch_shadow_calls;

-- name: insert_shadow_calls_ignore_known
INSERT OR IGNORE INTO shadow_calls BY NAME SELECT * FROM batch_shadow_calls;

-- name: insert_shadow_attempts
INSERT INTO shadow_attempts BY NAME SELECT * FROM batch_attempts;

-- name: insert_shadow_attempts_ignore_known
INSERT OR IGNORE INTO shadow_attempts BY NAME SELECT * FROM batch_attempts;

-- name: paid_twice
-- Samples whose cheap model was paid more than once (retries, or a call cancelled at a stop
-- and made again after the restart).
SELECT sample_id, model, count(*) AS paid_attempts, sum(spend_usd) AS spend_usd
FROM shadow_attempts WHERE spend_usd > 0 GROUP BY ALL HAVING count(*) > 1;

-- name: insert_scores
INSERT INTO scores BY NAME SELECT * FROM batch_scores;

-- name: insert_scores_ignore_known
INSERT OR IGNORE INTO scores BY NAME SELECT * FROM batch_scores;

-- name: finish_samples
UPDATE samples SET status = f.status, skip_reason = f.skip_reason, finished_at = current_timestamp
FROM batch_finished f
WHERE samples.sample_id = f.sample_id AND samples.status = 'pending';

-- name: gate_estimate
SELECT * FROM savings_at([$threshold]) WHERE router = $router AND model = $model;

-- name: counts
SELECT (SELECT count(*) FROM requests) AS requests,
       (SELECT count(*) FROM rejected) AS rejected,
       (SELECT count(*) FROM samples) AS samples,
       (SELECT count(*) FROM samples WHERE status = 'pending') AS pending,
       (SELECT count(*) FROM samples WHERE status = 'done') AS done,
       (SELECT count(*) FROM samples WHERE status LIKE 'skipped%') AS skipped,
       (SELECT coalesce(sum(cost_usd), 0) FROM shadow_calls) AS shadow_spend_usd;

-- name: pending_count
SELECT count(*) FROM samples WHERE status = 'pending';

-- name: shed_samples
-- Backpressure: keep the oldest $keep pending samples (the runner works from the oldest), shed
-- the newer rest. Shed samples stay out of n_h; their requests stay in N_h.
UPDATE samples SET status = 'skipped_shed', skip_reason = $reason, finished_at = current_timestamp
WHERE status = 'pending' AND sample_id IN (
    SELECT sample_id FROM samples WHERE status = 'pending'
    ORDER BY created_at, sample_id
    OFFSET $keep
);

-- name: recent_shadow_spend
-- Shadow spend of the last day, per minute, with the age of the minute's end (for the budget);
-- plus, at age 0, what earlier runs leased beyond what they wrote (calls in flight or results
-- unwritten when they were killed). Runs take turns on the file, so a run's rows are those
-- written between its first lease and the next run's.
SELECT greatest(0, epoch(current_timestamp::TIMESTAMP)
                   - epoch(date_trunc('minute', called_at)) - 60) AS age_s,
       sum(coalesce(spend_usd, cost_usd, 0)) AS usd
FROM shadow_calls
WHERE called_at > current_timestamp::TIMESTAMP - INTERVAL 1 DAY
GROUP BY date_trunc('minute', called_at)
UNION ALL
SELECT 0.0 AS age_s, leased - written AS usd
FROM (
    SELECT r.leased,
           (SELECT coalesce(sum(coalesce(c.spend_usd, c.cost_usd, 0)), 0) FROM shadow_calls c
            WHERE c.called_at >= r.first_ts
              AND (r.next_first IS NULL OR c.called_at < r.next_first)) AS written
    FROM (SELECT sum(nano) / 1e9 AS leased, min(ts) AS first_ts, max(ts) AS last_ts,
                 lead(min(ts)) OVER (ORDER BY min(ts)) AS next_first
          FROM budget_leases GROUP BY run_id) r
    WHERE r.last_ts > current_timestamp::TIMESTAMP - INTERVAL 1 DAY
) WHERE leased > written;

-- name: insert_budget_lease
INSERT INTO budget_leases (run_id, nano) VALUES ($run_id, $nano);

-- name: frontier_answers_by_segment
-- The newest frontier answers per value of the scoring tag: what `tfidf_cosine` is fitted on.
SELECT coalesce(tags->>$tag, '') AS segment, response_text
FROM samples
WHERE response_text IS NOT NULL AND response_text <> ''
QUALIFY row_number() OVER (PARTITION BY coalesce(tags->>$tag, '') ORDER BY created_at DESC)
        <= $per_segment;

-- name: insert_offset_reset
-- A reset and the position it moves to, in one transaction (`reset_offset` below): the new
-- position replaces the stored one, which `upsert_offsets` only ever moves forward.
INSERT INTO offset_resets (topic, "partition", stored, log_start, high_water, kind, policy,
                           new_offset, lost)
VALUES ($topic, $partition, $stored, $log_start, $high_water, $kind, $policy, $new_offset, $lost);

-- name: reset_offset
INSERT INTO offsets (topic, "partition", next_offset) VALUES ($topic, $partition, $new_offset)
ON CONFLICT (topic, "partition") DO UPDATE
SET next_offset = excluded.next_offset, last_ts_ms = NULL, last_crc = NULL, updated_at = now();
