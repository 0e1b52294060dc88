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
       frontier_cost_usd, input_tokens, scorer, sample_key
FROM samples
-- (the runner's in-flight samples, still pending here until their results are written, are
-- left out by `Store.pending_samples`, without a join: DuckDB 2.0.1 and 1.5.6 keep ~2-4 KB of
-- heap for good after every join, and the runner asks this many times a second)
WHERE status = 'pending'
ORDER BY created_at, sample_id
LIMIT $limit;

-- name: insert_router_scores
INSERT INTO router_scores BY NAME SELECT * FROM batch_router_scores;

-- name: insert_noise_floor
INSERT INTO noise_floor BY NAME SELECT * FROM batch_noise_floor;

-- name: insert_noise_floor_ignore_known
INSERT OR IGNORE INTO noise_floor BY NAME SELECT * FROM batch_noise_floor;

-- name: insert_router_calls
-- Every router call, answered or not (a result written again adds its calls again: they were
-- made again).
INSERT INTO router_calls BY NAME SELECT * FROM batch_router_calls;

-- name: insert_router_calls_ignore_known
-- The same write again after it committed: only the samples whose calls are not stored yet.
INSERT INTO router_calls BY NAME
SELECT * FROM batch_router_calls b
WHERE NOT EXISTS (SELECT 1 FROM router_calls rc
                  WHERE rc.sample_id = b.sample_id AND rc.router = b.router);

-- name: insert_router_scores_ignore_known
INSERT OR IGNORE INTO router_scores BY NAME SELECT * FROM batch_router_scores;

-- name: insert_oof_router_scores
-- A learned router's out-of-fold scores for samples it has no score for yet (`batch_oof`):
-- a score given when the sample arrived is never replaced. With the sample's key.
INSERT OR IGNORE INTO router_scores BY NAME
SELECT b.* REPLACE (s.sample_key AS sample_key) FROM batch_oof b JOIN samples s USING (sample_id);

-- name: learned_router_rows
-- A learned router's training rows: the completed samples that `$model` was scored on (by the
-- sample's scorer), in the order they arrived, with their request (never the frontier answer);
-- only those from before the oldest sample still pending, so that every sample a new version
-- scores afterwards came after its training cutoff.
WITH open AS (
    SELECT min(r.ts) AS first_open
    FROM samples s JOIN requests r ON r.request_id = s.sample_id
    WHERE s.status = 'pending'
)
SELECT s.sample_id, r.ts, s.frontier_model, s.messages, s.tags, sc.value
FROM samples s
JOIN requests r ON r.request_id = s.sample_id
JOIN scores sc ON sc.sample_id = s.sample_id AND sc.model = $model AND sc.scorer = s.scorer
CROSS JOIN open
WHERE s.status = 'done' AND sc.value IS NOT NULL AND s.messages IS NOT NULL  -- (retention)
  AND (open.first_open IS NULL OR r.ts < open.first_open)
ORDER BY r.ts, s.sample_id;


-- name: insert_shadow_calls
INSERT INTO shadow_calls BY NAME SELECT * FROM batch_shadow_calls;

-- name: insert_shadow_calls_ignore_known
INSERT OR IGNORE INTO shadow_calls BY NAME SELECT * FROM batch_shadow_calls;

-- name: insert_shadow_attempts
INSERT INTO shadow_attempts BY NAME SELECT * FROM batch_attempts;

-- name: insert_cascade_scores
INSERT INTO cascade_scores BY NAME SELECT * FROM batch_cascade_scores;

-- name: insert_cascade_scores_ignore_known
INSERT OR IGNORE INTO cascade_scores BY NAME SELECT * FROM batch_cascade_scores;

-- name: insert_judge_calls
INSERT INTO judge_calls BY NAME SELECT * FROM batch_judge_calls;

-- name: insert_judge_calls_ignore_known
-- The same write again after it committed: only the answers whose judge calls are not stored.
INSERT INTO judge_calls BY NAME
SELECT * FROM batch_judge_calls b
WHERE NOT EXISTS (SELECT 1 FROM judge_calls j
                  WHERE j.sample_id = b.sample_id AND j.model = b.model AND j.judge = b.judge);

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

-- name: gate_samples
-- The completed samples of one (router, model) routed at $threshold, with their stratum's N_h
-- and exact frontier spend: the gate computes its estimates and intervals from these
-- (analytics.intervals), the same figures the `savings` views give.
SELECT o.stratum, o.n_stratum AS big_n, o.q, o.cf, o.cm, ps.score < $threshold AS cheap,
       f.frontier_usd
FROM sample_outcomes o
JOIN policy_scores ps ON ps.sample_id = o.sample_id AND ps.model = o.model
LEFT JOIN stratum_frontier f ON f.stratum = o.stratum
WHERE ps.router = $router AND o.model = $model
ORDER BY o.stratum;

-- name: counts
SELECT (SELECT count(*) FROM requests)
         + (SELECT coalesce(sum(requests), 0) FROM request_rollups)::BIGINT AS requests,
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
FROM (SELECT called_at, spend_usd, cost_usd FROM shadow_calls
      UNION ALL SELECT called_at, spend_usd, cost_usd FROM noise_floor   -- floor calls and
      UNION ALL SELECT called_at, spend_usd, cost_usd FROM judge_calls)  -- judge calls: same budget
WHERE called_at > current_timestamp::TIMESTAMP - INTERVAL 1 DAY
GROUP BY date_trunc('minute', called_at)
UNION ALL
SELECT 0.0 AS age_s, leased - written AS usd
FROM (
    SELECT r.leased,
           (SELECT coalesce(sum(coalesce(c.spend_usd, c.cost_usd, 0)), 0)
            FROM (SELECT called_at, spend_usd, cost_usd FROM shadow_calls
                  UNION ALL SELECT called_at, spend_usd, cost_usd FROM noise_floor
                  UNION ALL SELECT called_at, spend_usd, cost_usd FROM judge_calls) c
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

-- name: savings_cross_join
-- The savings estimate as it was computed before routed_strata accumulated sums in score order:
-- every sample joined with every threshold. Kept only as the baseline of
-- benchmarks/analytics.py (cost grows with samples x thresholds).
WITH g AS (
    SELECT unnest($thresholds::DOUBLE[]) AS threshold
), x AS (
    SELECT ps.router, g.threshold, o.model, o.stratum, o.n_stratum, o.cf, o.cm, o.q,
           ps.score < g.threshold AS cheap
    FROM sample_outcomes o
    JOIN policy_scores ps ON ps.sample_id = o.sample_id AND ps.model = o.model
    CROSS JOIN g
), r AS (
    SELECT router, threshold, model, stratum,
           any_value(n_stratum) AS big_n, count(*) AS n,
           avg(CASE WHEN cheap THEN q ELSE 1.0 END) AS mq,
           coalesce(var_samp(CASE WHEN cheap THEN q ELSE 1.0 END), 0.25) AS vq,
           avg(CASE WHEN cheap THEN cm ELSE cf END) AS mc,
           avg(cf) AS mcf,
           avg(CASE WHEN cheap THEN 0.0 ELSE 1.0 END) AS ms
    FROM x GROUP BY ALL
)
SELECT router, threshold, model, count(*) AS strata, sum(n)::BIGINT AS samples,
       sum(big_n)::BIGINT AS requests,
       sum(big_n * mq) / sum(big_n) AS quality,
       sqrt(sum(big_n * big_n * vq / n)) / sum(big_n) AS quality_se,
       1 - sum(big_n * mc) / nullif(sum(big_n * mcf), 0) AS savings,
       sum(big_n * ms) / sum(big_n) AS strong_share
FROM r GROUP BY ALL;

-- name: bench_fill
-- benchmarks/analytics.py: `samples` completed samples of one cheap model in `strata` strata
-- (twice as many eligible requests), scored by `routers` routers. Seeded (setseed first).
INSERT INTO requests (request_id, stratum, eligible, sampled, cost_usd)
SELECT 'r' || i, 'gpt-4o|t' || (i % $strata), true, i < $samples, 0.001 + random() * 0.02
FROM range(2 * $samples) t(i);
INSERT INTO samples (sample_id, stratum, frontier_model, scorer, frontier_cost_usd, status)
SELECT request_id, stratum, 'gpt-4o', 'exact_match', cost_usd, 'done'
FROM requests WHERE sampled;
INSERT INTO shadow_calls (sample_id, model, answer, cost_usd, sample_key)
SELECT sample_id, 'cheap', 'a', frontier_cost_usd * (0.05 + random() * 0.1), sample_key FROM samples;
INSERT INTO scores (sample_id, model, scorer, value, sample_key)
SELECT sample_id, 'cheap', 'exact_match', CASE WHEN random() < 0.9 THEN 1.0 ELSE 0.0 END,
       sample_key
FROM samples;
INSERT INTO router_scores (sample_id, router, score, sample_key)
SELECT s.sample_id, 'router' || r, round(random(), 3), s.sample_key
FROM samples s, range($routers) t(r);

-- name: router_samples
-- Every router's score on every completed sample, with the stratum's N_h (for
-- analytics.curves.router_metrics; callers pick the router and model).
SELECT rs.router, o.model, o.stratum, o.n_stratum AS big_n, o.q, rs.score
FROM completed_outcomes o JOIN router_scores rs ON rs.sample_id = o.sample_id
ORDER BY rs.router, o.model, o.stratum;

-- name: calibration_samples
-- The completed samples of one (router, model) with their side of the cutoff $until (by the
-- production time; requests without one count as before) and their stratum's N_h and exact
-- frontier spend on that side, so each period is estimated for its own traffic. Requests that
-- retention rolled up count by their hour: before when the hour ends by $until.
WITH pop AS (
    SELECT stratum, before, sum(n)::BIGINT AS big_n,
           CASE WHEN sum(priced) = sum(n) THEN sum(cost_usd) END AS frontier_usd
    FROM (SELECT stratum, coalesce(ts <= $until, true) AS before, count(*) AS n,
                 count(cost_usd) AS priced, sum(cost_usd) AS cost_usd
          FROM requests WHERE eligible GROUP BY ALL
          UNION ALL
          SELECT stratum, hour + INTERVAL 1 HOUR <= $until, sum(requests), sum(priced),
                 sum(cost_usd)
          FROM request_rollups WHERE eligible GROUP BY ALL)
    GROUP BY ALL
)
SELECT o.stratum, coalesce(r.ts <= $until, true) AS before, p.big_n, p.frontier_usd,
       o.q, o.cf, o.cm, ps.score
FROM completed_outcomes o
JOIN requests r ON r.request_id = o.sample_id
JOIN policy_scores ps ON ps.sample_id = o.sample_id AND ps.model = o.model
JOIN pop p ON p.stratum = o.stratum AND p.before = coalesce(r.ts <= $until, true)
WHERE ps.router = $router AND o.model = $model
ORDER BY o.stratum;

-- name: calibration_default_cutoff
-- Without --until: the production time before which 70% of the completed samples fall.
SELECT quantile_disc(r.ts, 0.7) FROM samples s JOIN requests r ON r.request_id = s.sample_id
WHERE s.status = 'done' AND r.ts IS NOT NULL;

-- name: window_samples
-- The completed samples of one (router, model) routed at $threshold, per window of production
-- time (date_trunc($width, ts); requests without a time are left out), with the stratum's N_h
-- and exact frontier spend within the window, so each window is estimated for its own traffic.
WITH pop AS (SELECT stratum, win, big_n, frontier_usd FROM population(width := $width))
SELECT p.win AS "window", o.stratum, p.big_n, o.q, o.cf, o.cm,
       ps.score < $threshold AS cheap, p.frontier_usd
FROM completed_outcomes o
JOIN requests r ON r.request_id = o.sample_id
JOIN policy_scores ps ON ps.sample_id = o.sample_id AND ps.model = o.model
JOIN pop p ON p.stratum = o.stratum AND p.win = date_trunc($width, r.ts)
WHERE ps.router = $router AND o.model = $model
ORDER BY 1, 2;

-- name: report_curves
-- shadowroute report: every router on the savings grid and the reference policies, with bounds
-- (the multi-tier policies are in `report_frontier`).
SELECT router, threshold, model, samples, quality, quality_lower, quality_upper, savings,
       savings_lower, savings_upper, strong_share, projected_usd_saved
FROM savings WHERE router NOT IN (SELECT policy FROM tier_policies)
ORDER BY model, router, threshold;

-- name: report_frontier
-- shadowroute report: the cost-quality frontier across every policy, when multi-tier policies
-- are configured (without them, the curves per cheap model show it all).
SELECT kind, policy, model, label, samples, quality, quality_lower, quality_upper, savings,
       on_frontier
FROM policy_frontier WHERE EXISTS (SELECT 1 FROM tier_policies)
ORDER BY savings;

-- name: report_segments
-- shadowroute report: per segment, all traffic on the cheap model (all_cheap), with bounds.
SELECT model, segment, samples, requests, quality, quality_lower, quality_upper, savings,
       projected_usd_saved
FROM segment_savings WHERE router = 'all_cheap' ORDER BY model, quality;

-- name: report_traffic
-- shadowroute report: 100% of the requests by frontier model and tag value (the stratum), with
-- those retention rolled up (their latency quantiles are gone: the quantiles are of the rows
-- still in `requests`).
SELECT model, segment, sum(requests)::BIGINT AS requests, sum(cost_usd) AS cost_usd,
       sum(input_tokens)::BIGINT AS input_tokens, sum(output_tokens)::BIGINT AS output_tokens,
       any_value(latency_p50_ms) FILTER (WHERE latency_p50_ms IS NOT NULL) AS latency_p50_ms,
       any_value(latency_p95_ms) FILTER (WHERE latency_p95_ms IS NOT NULL) AS latency_p95_ms,
       sum(eligible)::BIGINT AS eligible, sum(sampled)::BIGINT AS sampled
FROM (SELECT model, split_part(stratum, '|', 2) AS segment, count(*) AS requests,
             sum(cost_usd) AS cost_usd, sum(input_tokens) AS input_tokens,
             sum(output_tokens) AS output_tokens, median(latency_ms) AS latency_p50_ms,
             quantile_cont(latency_ms, 0.95) AS latency_p95_ms,
             count(*) FILTER (WHERE eligible) AS eligible,
             count(*) FILTER (WHERE sampled) AS sampled
      FROM requests GROUP BY ALL
      UNION ALL
      SELECT model, split_part(stratum, '|', 2), sum(requests), sum(cost_usd), sum(input_tokens),
             sum(output_tokens), NULL, NULL, sum(requests) FILTER (WHERE eligible), 0
      FROM request_rollups GROUP BY ALL)
GROUP BY ALL ORDER BY cost_usd DESC NULLS LAST;

-- name: report_cost_concentration
-- shadowroute report: how lopsided the spend is: the smallest share of requests (the most
-- expensive first) that makes 80% of the cost.
WITH c AS (
    SELECT cost_usd, sum(cost_usd) OVER (ORDER BY cost_usd DESC ROWS UNBOUNDED PRECEDING) AS cum,
           row_number() OVER (ORDER BY cost_usd DESC) AS k,
           sum(cost_usd) OVER () AS total, count(*) OVER () AS n
    FROM requests WHERE cost_usd IS NOT NULL
)
SELECT min(k) FILTER (WHERE cum >= 0.8 * total) / any_value(n) AS share_of_requests_for_80pct,
       any_value(n) AS requests, any_value(total) AS cost_usd
FROM c;

-- name: report_daily
-- shadowroute report: per day of production time, the frontier spend of 100% of the requests
-- and the sampled estimate of what all_cheap would save (the stratified ratio per day).
WITH pop AS (
    SELECT stratum, win AS day, big_n, cost_usd AS spend FROM population(width := 'day')
), s AS (
    SELECT date_trunc('day', r.ts) AS day, o.model, o.stratum, avg(o.cf) AS mcf,
           avg(o.cm) AS mcm, avg(o.q) AS mq
    FROM completed_outcomes o JOIN requests r ON r.request_id = o.sample_id
    WHERE r.ts IS NOT NULL GROUP BY ALL
)
SELECT s.day, s.model, sum(p.spend) AS frontier_usd,
       1 - sum(p.big_n * s.mcm) / nullif(sum(p.big_n * s.mcf), 0) AS savings_all_cheap,
       sum(p.big_n * s.mq) / sum(p.big_n) AS quality_all_cheap
FROM s JOIN pop p ON p.stratum = s.stratum AND p.day = s.day
GROUP BY ALL ORDER BY s.day, s.model;

-- name: report_ineligible
-- shadowroute report: what the estimate does not cover, by reason.
SELECT reason, sum(requests)::BIGINT AS requests, sum(cost_usd) AS cost_usd
FROM (SELECT coalesce(ineligible_reason, 'unknown') AS reason, count(*) AS requests,
             sum(cost_usd) AS cost_usd
      FROM requests WHERE NOT eligible GROUP BY ALL
      UNION ALL
      SELECT coalesce(ineligible_reason, 'unknown'), sum(requests), sum(cost_usd)
      FROM request_rollups WHERE NOT eligible GROUP BY ALL)
GROUP BY ALL ORDER BY requests DESC;

-- name: plan_traffic
-- Eligible production traffic per stratum over the last 1, 6, 24 and 168 hours of the log (by
-- request time), with the mean token counts and frontier cost a replay would see and the span of
-- time each window covers (for `shadowroute plan`, which picks one window: fixed windows, so
-- the query takes no parameter and reads the same through /v1/sql).
WITH hi AS (SELECT max(ts) AS hi FROM requests),
windows(hours) AS (VALUES (1), (6), (24), (168)),
w AS (SELECT windows.hours, r.* FROM requests r, hi, windows
      WHERE r.ts > hi.hi - to_hours(windows.hours)),
span AS (SELECT hours, greatest(epoch(max(ts)) - epoch(min(ts)), 1.0) AS span_s
         FROM w GROUP BY hours)
SELECT w.hours, stratum, count(*) AS eligible, avg(input_tokens) AS mean_input_tokens,
       avg(output_tokens) AS mean_output_tokens, avg(cost_usd) AS mean_frontier_usd,
       any_value(span.span_s) AS span_s
FROM w JOIN span USING (hours)
WHERE eligible
GROUP BY w.hours, stratum
ORDER BY w.hours, stratum;

-- name: clear_router_costs
DELETE FROM router_costs;

-- name: insert_router_cost
INSERT INTO router_costs (router, kind, usd_per_call) VALUES ($router, $kind, $usd);

-- name: clear_tier_policies
DELETE FROM tier_policies;

-- name: insert_tier_policies
INSERT INTO tier_policies BY NAME SELECT * FROM tier_rows;

-- name: retention_next_hour
-- The oldest hour of production time holding requests retention may roll up: older than
-- $before and never sampled (a sample keeps its request).
SELECT date_trunc('hour', min(ts)) FROM requests WHERE ts < $before AND NOT coalesce(sampled, false);

-- name: rollup_requests
INSERT INTO request_rollups (hour, stratum, model, eligible, ineligible_reason, requests, priced,
                             cost_usd, input_tokens, output_tokens, latency_ms_sum, latency_n)
SELECT date_trunc('hour', ts), stratum, model, eligible, ineligible_reason, count(*),
       count(cost_usd), sum(cost_usd), sum(input_tokens), sum(output_tokens), sum(latency_ms),
       count(latency_ms)
FROM requests WHERE ts >= $lo AND ts < $hi AND NOT coalesce(sampled, false)
GROUP BY ALL;

-- name: purge_requests
DELETE FROM requests WHERE ts >= $lo AND ts < $hi AND NOT coalesce(sampled, false);

-- name: purge_sample_texts
-- Prompts and answers of the samples whose request is older than $before (their figures stay).
UPDATE samples SET messages = NULL, params = NULL, response_text = NULL
WHERE messages IS NOT NULL AND status <> 'pending'
  AND sample_id IN (SELECT request_id FROM requests WHERE ts < $before AND sampled);

-- name: purge_call_texts
UPDATE shadow_calls SET answer = NULL
WHERE answer IS NOT NULL
  AND sample_id IN (SELECT request_id FROM requests WHERE ts < $before AND sampled);

-- name: purge_floor_texts
UPDATE noise_floor SET answer = NULL
WHERE answer IS NOT NULL
  AND sample_id IN (SELECT request_id FROM requests WHERE ts < $before AND sampled);

-- name: purge_judge_texts
UPDATE judge_calls SET output = NULL
WHERE output IS NOT NULL
  AND sample_id IN (SELECT request_id FROM requests WHERE ts < $before AND sampled);

-- name: purge_rejected_raw
UPDATE rejected SET raw = NULL WHERE raw IS NOT NULL AND rejected_at < $before;
