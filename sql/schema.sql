-- The tables and views of shadowroute. Statements run in name order at start-up and are
-- idempotent, so an existing file is opened as it is.

-- name: schema_01_requests
-- One row per consumed production LLM call (metadata only; prompts live in `samples`).
CREATE TABLE IF NOT EXISTS requests (
    request_id          VARCHAR PRIMARY KEY,
    ts                  TIMESTAMP,          -- UTC time of the production call
    topic               VARCHAR,
    "partition"         INTEGER,
    "offset"            BIGINT,
    format              VARCHAR,            -- decoder that read it (openai_chat, ...)
    provider            VARCHAR,
    model               VARCHAR,            -- frontier model requested (the snapshot that served it: served_model)
    input_tokens        BIGINT,
    output_tokens       BIGINT,
    cached_input_tokens BIGINT,
    cost_usd            DOUBLE,
    cost_source         VARCHAR,            -- 'log' or 'price_table'
    latency_ms          DOUBLE,
    status              VARCHAR,            -- 'ok' or 'error'
    error               VARCHAR,
    tags                JSON,
    prompt_hash         VARCHAR,
    prompt_chars        BIGINT,
    stratum             VARCHAR,            -- 'model|tag value'
    eligible            BOOLEAN,            -- can be replayed and compared
    ineligible_reason   VARCHAR,
    sampled             BOOLEAN,
    sample_rate         DOUBLE,             -- the stratum's sampling probability
    ingested_at         TIMESTAMP DEFAULT current_timestamp
);

-- name: schema_02_rejected
-- Dead letters: records that could not become a request, with the reason and raw bytes (bounded).
CREATE TABLE IF NOT EXISTS rejected (
    topic       VARCHAR,
    "partition" INTEGER,
    "offset"    BIGINT,
    reason      VARCHAR,
    raw         BLOB,
    raw_size    BIGINT,
    rejected_at TIMESTAMP DEFAULT current_timestamp
);

-- name: schema_03_samples
CREATE TABLE IF NOT EXISTS samples (
    sample_id         VARCHAR PRIMARY KEY,  -- = requests.request_id
    stratum           VARCHAR,
    frontier_model    VARCHAR,
    messages          JSON,
    params            JSON,
    tags              JSON,
    response_text     VARCHAR,              -- the frontier answer production got
    frontier_cost_usd DOUBLE,
    input_tokens      BIGINT,
    output_tokens     BIGINT,
    scorer            VARCHAR,              -- scorer chosen for this sample's tag
    status            VARCHAR DEFAULT 'pending',  -- pending / done / skipped
    skip_reason       VARCHAR,
    created_at        TIMESTAMP DEFAULT current_timestamp,
    finished_at       TIMESTAMP
);

-- name: schema_04_shadow_calls
CREATE TABLE IF NOT EXISTS shadow_calls (
    sample_id           VARCHAR,
    model               VARCHAR,            -- configured cheap model name
    answer              VARCHAR,
    input_tokens        BIGINT,
    cached_input_tokens BIGINT,
    output_tokens       BIGINT,
    cost_usd            DOUBLE,             -- usage x the model's configured prices
    latency_ms          DOUBLE,
    error               VARCHAR,            -- NULL when the call succeeded
    attempts            INTEGER,
    called_at           TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (sample_id, model)
);

-- name: schema_05_scores
CREATE TABLE IF NOT EXISTS scores (
    sample_id VARCHAR,
    model     VARCHAR,
    scorer    VARCHAR,
    value     DOUBLE,                       -- quality relative to the frontier answer, in [0, 1]
    PRIMARY KEY (sample_id, model, scorer)
);

-- name: schema_06_router_scores
CREATE TABLE IF NOT EXISTS router_scores (
    sample_id VARCHAR,
    router    VARCHAR,
    score     DOUBLE,                       -- probability that the strong model is needed
    PRIMARY KEY (sample_id, router)
);

-- name: schema_07_offsets
-- Next offset to read per partition, written in the same transaction as the rows.
CREATE TABLE IF NOT EXISTS offsets (
    topic       VARCHAR,
    "partition" INTEGER,
    next_offset BIGINT,
    updated_at  TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (topic, "partition")
);

-- name: schema_08_skipped
-- Items inside consumed records that are counted, not stored as requests: spans that are not
-- LLM calls, and request ids seen before in the same batch.
CREATE TABLE IF NOT EXISTS skipped (
    topic       VARCHAR,
    "partition" INTEGER,
    "offset"    BIGINT,
    reason      VARCHAR,
    items       BIGINT,
    skipped_at  TIMESTAMP DEFAULT current_timestamp
);

-- name: schema_10_sample_outcomes
-- One row per completed (sample, cheap model) with its stratum weight N_h / n_h.
CREATE OR REPLACE VIEW sample_outcomes AS
WITH pop AS (
    SELECT stratum, count(*) AS n_stratum FROM requests WHERE eligible GROUP BY stratum
), o AS (
    SELECT s.sample_id, s.stratum, c.model,
           s.frontier_cost_usd AS cf, c.cost_usd AS cm, sc.value AS q
    FROM samples s
    JOIN shadow_calls c ON c.sample_id = s.sample_id AND c.error IS NULL
    JOIN scores sc ON sc.sample_id = s.sample_id AND sc.model = c.model AND sc.scorer = s.scorer
        AND sc.value IS NOT NULL  -- a scorer that could not judge the pair: not a quality of 0
    WHERE s.status = 'done'
)
SELECT o.*, pop.n_stratum,
       count(*) OVER (PARTITION BY o.stratum, o.model) AS n_samples,
       pop.n_stratum / count(*) OVER (PARTITION BY o.stratum, o.model) AS weight
FROM o JOIN pop USING (stratum);

-- name: schema_11_policy_scores
-- Router scores per (sample, model), plus the two reference policies:
-- all_cheap (always the cheap model) and oracle (cheap exactly where it scored as well as the frontier).
CREATE OR REPLACE VIEW policy_scores AS
SELECT o.sample_id, o.model, rs.router, rs.score
FROM sample_outcomes o JOIN router_scores rs USING (sample_id)
UNION ALL
SELECT sample_id, model, 'all_cheap', 0.0 FROM sample_outcomes
UNION ALL
SELECT sample_id, model, 'oracle', CASE WHEN q >= 1.0 THEN 0.0 ELSE 1.0 END FROM sample_outcomes;

-- name: schema_12a_routed_strata
-- Per (router, threshold, model, stratum): N_h, n_h and the stratum means of the routed
-- quality (cheap ? q : 1), its variance, routed cost and frontier cost, at the given
-- thresholds. A request goes to the cheap model when score < threshold.
CREATE OR REPLACE MACRO routed_strata(thresholds) AS TABLE
WITH g AS (
    SELECT unnest(thresholds)::DOUBLE AS threshold
), x AS (
    SELECT ps.router, g.threshold, o.model, o.stratum, o.n_stratum, o.cf, o.cm, o.q,
           ps.score < g.threshold AS cheap
    FROM sample_outcomes o
    JOIN policy_scores ps ON ps.sample_id = o.sample_id AND ps.model = o.model
    CROSS JOIN g
)
SELECT router, threshold, model, stratum,
       split_part(stratum, '|', 2) AS segment,
       any_value(n_stratum) AS big_n, count(*) AS n,
       avg(CASE WHEN cheap THEN q ELSE 1.0 END) AS mq,
       coalesce(var_samp(CASE WHEN cheap THEN q ELSE 1.0 END), 0.25) AS vq,
       avg(CASE WHEN cheap THEN cm ELSE cf END) AS mc,
       avg(cf) AS mcf,
       avg(CASE WHEN cheap THEN 0.0 ELSE 1.0 END) AS ms
FROM x GROUP BY ALL;

-- name: schema_12b_grouped_savings_at
-- Stratified estimates for every (router, threshold, model) at the given thresholds, per
-- segment (the stratifying tag's value, e.g. task type) when by_segment, else over all
-- traffic. Quality is relative to the frontier (1 = as good); quality_se is the stratified
-- standard error (strata with one sample count as maximal variance 0.25).
CREATE OR REPLACE MACRO grouped_savings_at(thresholds, by_segment) AS TABLE
SELECT router, threshold, model,
       CASE WHEN by_segment THEN segment END AS segment,
       count(*) AS strata,
       sum(n)::BIGINT AS samples,
       sum(big_n)::BIGINT AS requests,
       sum(big_n * mq) / sum(big_n) AS quality,
       sqrt(sum(big_n * big_n * vq / n)) / sum(big_n) AS quality_se,
       1 - sum(big_n * mc) / nullif(sum(big_n * mcf), 0) AS savings,
       sum(big_n * ms) / sum(big_n) AS strong_share,
       sum(big_n * mcf) AS frontier_usd,
       sum(big_n * mc) AS routed_usd,
       sum(big_n * mcf) - sum(big_n * mc) AS projected_usd_saved
FROM routed_strata(thresholds) GROUP BY ALL;

-- name: schema_12c_savings_at
CREATE OR REPLACE MACRO savings_at(thresholds) AS TABLE
SELECT * EXCLUDE (segment) FROM grouped_savings_at(thresholds, false);

-- name: schema_12d_segment_savings_at
CREATE OR REPLACE MACRO segment_savings_at(thresholds) AS TABLE
SELECT * FROM grouped_savings_at(thresholds, true);

-- name: schema_13_savings
-- The savings table people query: every router on a threshold grid 0, 0.05, ..., 1, and the
-- reference policies (threshold NULL).
CREATE OR REPLACE VIEW savings AS
SELECT * FROM savings_at([0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
                          0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0])
WHERE router NOT IN ('all_cheap', 'oracle')
UNION ALL
SELECT * REPLACE (NULL::DOUBLE AS threshold) FROM savings_at([0.5])
WHERE router IN ('all_cheap', 'oracle');

-- name: schema_13b_segment_savings
-- Per segment (e.g. task type): every router on the grid, and the reference policies.
CREATE OR REPLACE VIEW segment_savings AS
SELECT * FROM segment_savings_at([0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
                                  0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0])
WHERE router NOT IN ('all_cheap', 'oracle')
UNION ALL
SELECT * REPLACE (NULL::DOUBLE AS threshold) FROM segment_savings_at([0.5])
WHERE router IN ('all_cheap', 'oracle');

-- name: schema_14_strata
-- Traffic, samples and weights per stratum and cheap model.
CREATE OR REPLACE VIEW strata AS
WITH r AS (
    SELECT stratum, count(*) AS requests, count(*) FILTER (WHERE eligible) AS eligible,
           count(*) FILTER (WHERE sampled) AS sampled, any_value(sample_rate) AS sample_rate,
           sum(cost_usd) AS frontier_usd
    FROM requests GROUP BY stratum
), s AS (
    SELECT stratum, model, any_value(n_samples) AS completed, any_value(weight) AS weight,
           avg(q) AS mean_quality
    FROM sample_outcomes GROUP BY ALL
)
SELECT r.*, s.model, coalesce(s.completed, 0) AS completed, s.weight, s.mean_quality
FROM r LEFT JOIN s USING (stratum);

-- name: schema_40_shadow_calls_deployment
-- Shadow execution (issue 4): columns added to existing files. `outcome` is ok / reused /
-- error / budget / unavailable; `spend_usd` is what the budget was charged over all attempts
-- (the restarted budget is seeded from it); `cost_usd` stays the answer's cost.
ALTER TABLE shadow_calls ADD COLUMN IF NOT EXISTS deployment VARCHAR;

-- name: schema_41_shadow_calls_outcome
ALTER TABLE shadow_calls ADD COLUMN IF NOT EXISTS outcome VARCHAR;

-- name: schema_42_shadow_calls_spend
ALTER TABLE shadow_calls ADD COLUMN IF NOT EXISTS spend_usd DOUBLE;

-- name: schema_43_shadow_calls_usage_estimated
ALTER TABLE shadow_calls ADD COLUMN IF NOT EXISTS usage_estimated BOOLEAN;

-- name: schema_44_shadow_calls_reused_from
ALTER TABLE shadow_calls ADD COLUMN IF NOT EXISTS reused_from VARCHAR;

-- name: schema_45_budget_leases
-- The shadow budget's journal, written *ahead* of spending: a run leases room in chunks before
-- its calls use it and gives back what it did not use when it stops cleanly. A run killed
-- before its results were written leaves more leased than `shadow_calls` holds; the restarted
-- budget counts the difference as spent (`recent_shadow_spend`).
CREATE TABLE IF NOT EXISTS budget_leases (
    run_id  VARCHAR NOT NULL,
    ts      TIMESTAMP DEFAULT current_timestamp,
    nano    BIGINT NOT NULL     -- USD x 1e9; negative: unused room given back at a clean stop
);

-- name: schema_50_scores_scorer_used
-- The scorer that judged the pair: `scorer` is the sample's configured one (the savings views
-- join on it); for `auto` this is the one it picked from the frontier answer.
ALTER TABLE scores ADD COLUMN IF NOT EXISTS scorer_used VARCHAR;

-- name: schema_51_scores_error
-- Why a scorer could not judge the pair (`value` is NULL then, and the pair is left out of the
-- estimates rather than counted as quality 0).
ALTER TABLE scores ADD COLUMN IF NOT EXISTS error VARCHAR;

-- name: schema_60_offset_resets
-- Broker or topic resets seen by the Kafka source (issue 14): a stored position outside the
-- partition's [log start, high water] range. `kind` is `past_end` (the broker restarted empty,
-- the topic was re-created: the records from `new_offset` on are new) or `before_start`
-- (retention removed records never read: `lost` of them) or `replaced` (the position is inside
-- the log, but the record before it is not the one read there: the broker or topic was reset
-- and refilled past the old position while the service was away). `policy` is where the source
-- went.
CREATE TABLE IF NOT EXISTS offset_resets (
    ts          TIMESTAMP DEFAULT current_timestamp,
    topic       VARCHAR NOT NULL,
    "partition" INTEGER NOT NULL,
    stored      BIGINT NOT NULL,    -- the position the source held
    log_start   BIGINT,             -- the partition's actual range (NULL: not known)
    high_water  BIGINT,
    kind        VARCHAR NOT NULL,
    policy      VARCHAR NOT NULL,   -- earliest / latest
    new_offset  BIGINT,             -- where reading goes on (NULL: the broker decides)
    lost        BIGINT NOT NULL     -- records removed before they were read (before_start)
);

-- name: schema_61_offsets_last_ts
-- The last record read per partition (timestamp and CRC-32 of its value): on assignment the
-- Kafka source reads that record again and compares, to see a log replaced under a position
-- that is still in range.
ALTER TABLE offsets ADD COLUMN IF NOT EXISTS last_ts_ms BIGINT;

-- name: schema_62_offsets_last_crc
ALTER TABLE offsets ADD COLUMN IF NOT EXISTS last_crc BIGINT;

-- name: schema_63_shadow_attempts
-- Every request sent to a cheap model, one row per attempt, over all runs: retries, and
-- attempts cancelled in flight when the service stopped (`cancelled`, charged their worst
-- case), whose sample runs again after the restart. What was paid twice:
--   SELECT sample_id, model, count(*), sum(spend_usd) FROM shadow_attempts
--   WHERE spend_usd > 0 GROUP BY ALL HAVING count(*) > 1
-- `shadow_calls.spend_usd` is the final call's spend; this table holds every attempt's.
CREATE TABLE IF NOT EXISTS shadow_attempts (
    attempt_id  VARCHAR PRIMARY KEY,
    sample_id   VARCHAR NOT NULL,
    model       VARCHAR NOT NULL,
    attempt     INTEGER NOT NULL,   -- 1, 2, ... within one call
    deployment  VARCHAR,
    outcome     VARCHAR NOT NULL,   -- ok / error (not billed) / unknown (sent, no usable answer:
                                    -- worst case) / cancelled (in flight at a stop: worst case)
    spend_usd   DOUBLE NOT NULL,    -- what the budget was charged for it
    latency_ms  DOUBLE,
    error       VARCHAR,
    called_at   TIMESTAMP DEFAULT current_timestamp
);

-- name: schema_52_requests_served_model
-- Issue 16: `model` is the requested model (strata, prices); the dated snapshot that served the
-- call, when the log names it, is kept beside it.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS served_model VARCHAR;

-- name: schema_53_otlp_pending
-- OTel spans waiting for their message content logged apart (OTLP log records), and content
-- waiting for its span (`consumers.join`): written with the offsets of the records they came
-- from and deleted in the transaction of the batch that let them go, so a restart resumes the
-- join. `seq` orders them; a deletion removes only the key's older rows.
CREATE TABLE IF NOT EXISTS otlp_pending (
    key           VARCHAR,     -- the span's request id, `traceId:spanId`
    seq           BIGINT,
    kind          VARCHAR,     -- 'span' (payload: the request) or 'content' (payload: events)
    topic         VARCHAR,
    "partition"   INTEGER,
    "offset"      BIGINT,
    first_seen_ms BIGINT,      -- when the key's first part was read: its join window starts
    payload       JSON
);
