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

-- name: schema_08c_population
-- The eligible requests per stratum (and window of production time with a `width`, any
-- date_trunc part: date_trunc(NULL, ts) is NULL, one window): N_h, the frontier spend when every
-- request's cost is known (`frontier_usd`, else NULL) and the known spend (`cost_usd`), from the
-- rows in `requests` plus those retention rolled up into `request_rollups` (per hour: a window
-- finer than an hour is exact only over the rows still in `requests`). Every estimate takes
-- N_h from here, so a window's figures stay what they were when its rows are purged.
CREATE OR REPLACE MACRO population(width := NULL) AS TABLE
SELECT stratum, win, sum(n)::BIGINT AS big_n,
       CASE WHEN sum(priced) = sum(n) THEN sum(cost_usd) END AS frontier_usd,
       sum(cost_usd) AS cost_usd
FROM (SELECT stratum, date_trunc(width, ts) AS win, count(*) AS n, count(cost_usd) AS priced,
             sum(cost_usd) AS cost_usd
      FROM requests WHERE eligible AND (width IS NULL OR ts IS NOT NULL)
      GROUP BY ALL
      UNION ALL
      SELECT stratum, date_trunc(width, hour), sum(requests), sum(priced), sum(cost_usd)
      FROM request_rollups WHERE eligible
      GROUP BY ALL)
GROUP BY stratum, win;

-- name: schema_09_completed_outcomes
-- One row per completed (sample, cheap model) with N_h, the stratum's eligible requests.
CREATE OR REPLACE VIEW completed_outcomes AS
WITH pop AS (SELECT stratum, big_n AS n_stratum FROM population())
SELECT s.sample_id, s.stratum, c.model,
       s.frontier_cost_usd AS cf, c.cost_usd AS cm, sc.value AS q, pop.n_stratum
FROM samples s
JOIN shadow_calls c ON c.sample_id = s.sample_id AND c.error IS NULL
JOIN scores sc ON sc.sample_id = s.sample_id AND sc.model = c.model AND sc.scorer = s.scorer
    AND sc.value IS NOT NULL  -- a scorer that could not judge the pair: not a quality of 0
JOIN pop ON pop.stratum = s.stratum
WHERE s.status = 'done';

-- name: schema_10_sample_outcomes
-- One row per completed (sample, cheap model) with its stratum weight N_h / n_h.
CREATE OR REPLACE VIEW sample_outcomes AS
SELECT sample_id, stratum, model, cf, cm, q, n_stratum,
       count(*) OVER (PARTITION BY stratum, model) AS n_samples,
       n_stratum / count(*) OVER (PARTITION BY stratum, model) AS weight
FROM completed_outcomes;

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

-- name: schema_11b_stratum_frontier
-- The frontier spend of each stratum's eligible requests, known exactly from `requests` (NULL
-- when a request in it has no cost), so estimates report it rather than estimate it.
CREATE OR REPLACE VIEW stratum_frontier AS
SELECT stratum, frontier_usd FROM population();

-- name: schema_12a_routed_strata
-- Per (router, threshold, model, stratum): N_h, n_h and the sums over its samples of the routed
-- loss l = (cheap ? 1 - q : 0), the strong indicator s, the routed cost c = (cheap ? c^m : c^F)
-- and the frontier cost f (with squares and the cross product, for the variances), at the
-- given thresholds. A request goes to the cheap model when score < threshold.
-- Cost grows with the samples, not samples x thresholds: each score falls in one bin between
-- the sorted distinct thresholds (bin = #{thresholds <= score}, at most 1023 distinct
-- thresholds per call), the samples are summed per (router, model, stratum, bin) and the bins
-- accumulated in order; threshold number j (from 1, in order) then takes the running sums up to
-- bin j - 1 (an equi-join). A stratum's totals are what every sample costs on the frontier; the
-- cheap side replaces its part.
-- Speed (benchmarks/analytics.py; the work per row is the same for discrete and continuous
-- scores):
-- * Tables are joined on one integer: `sample_key` (schema_80), and a (sample, model, scorer)
--   triple numbered from it. DuckDB joins a single column of dense integers by direct lookup;
--   on the VARCHAR sample_id, or on two columns, the same join costs 3-10x as much. A row
--   written without a key (by hand) finds it through sample_id.
-- * A score's bin is read from a table of 2^12 buckets over [0, 1] (lo[b] = #{thresholds in
--   the buckets below b}) and settled by comparing the thresholds inside its own bucket (almost
--   always none or one; several only for thresholds closer than 2^-12 or outside [0, 1]).
-- * Routers, models and strata are numbered first and every (sample, router) row is summed on
--   one integer key, never on strings (10x cheaper in DuckDB); the reference policies are summed
--   from the outcomes' totals per (model, stratum, q = 1).
-- * The work per (sample, router) row is kept to additions and two list look-ups: the key's
--   radixes are multiplied in on the smaller sides (per outcome, per router), a score's list
--   position is computed in one step, and the outcomes are built in one pass (10-15% less time
--   than multiplying per row; benchmarks/analytics.py).
CREATE OR REPLACE MACRO routed_strata(thresholds, width := NULL, by_scorer := NULL) AS TABLE
WITH g AS (
    -- the distinct thresholds in order, numbered from 1
    SELECT t AS threshold, row_number() OVER (ORDER BY t) AS j
    FROM (SELECT DISTINCT unnest(thresholds)::DOUBLE AS t) WHERE t IS NOT NULL
), strata AS MATERIALIZED (
    -- the strata of eligible requests (`population`, rolled-up ones included), numbered: N_h
    -- and their exact frontier spend. With a `width` ('hour', 'day', any date_trunc part) a
    -- stratum is a (stratum, window of production time) pair: each window is estimated for
    -- its own traffic, requests without a time left out.
    SELECT stratum, win, row_number() OVER (ORDER BY stratum, win) AS h, big_n, frontier_usd
    FROM population(width := width)
), done AS (
    -- the completed samples, with their stratum's number
    -- (by_scorer: the scorer whose values are the quality, instead of each sample's own)
    SELECT s.sample_key, coalesce(by_scorer, s.scorer) AS scorer, s.frontier_cost_usd AS cf,
           p.h
    FROM (SELECT sample_key, stratum, NULL::TIMESTAMP AS win, scorer, frontier_cost_usd
          FROM samples WHERE status = 'done' AND width IS NULL
          UNION ALL
          SELECT s.sample_key, s.stratum, date_trunc(width, r.ts), s.scorer, s.frontier_cost_usd
          FROM samples s JOIN requests r ON r.request_id = s.sample_id
          WHERE s.status = 'done' AND r.ts IS NOT NULL AND width IS NOT NULL) s
    JOIN strata p ON p.stratum = s.stratum AND p.win IS NOT DISTINCT FROM s.win
), calls AS (
    -- the answered cheap calls, scores and router scores by sample_key; rows without one find
    -- it by sample_id (the samples looked up first with IN: when no row lacks a key, that
    -- branch reads nothing, where a join would read every sample_id)
    SELECT sample_key, model, cost_usd FROM shadow_calls
    WHERE error IS NULL AND sample_key IS NOT NULL
    UNION ALL
    SELECT s.sample_key, x.model, x.cost_usd FROM shadow_calls x JOIN samples s USING (sample_id)
    WHERE x.error IS NULL AND x.sample_key IS NULL
      AND s.sample_id IN (SELECT sample_id FROM shadow_calls WHERE sample_key IS NULL)
), quality AS (
    SELECT sample_key, model, scorer, value FROM scores
    WHERE value IS NOT NULL AND sample_key IS NOT NULL
    UNION ALL
    SELECT s.sample_key, sc.model, sc.scorer, sc.value FROM scores sc JOIN samples s USING (sample_id)
    WHERE sc.value IS NOT NULL AND sc.sample_key IS NULL
      AND s.sample_id IN (SELECT sample_id FROM scores WHERE sample_key IS NULL)
), routes AS (
    SELECT sample_key, router, score FROM router_scores WHERE sample_key IS NOT NULL
    UNION ALL
    SELECT s.sample_key, rs.router, rs.score FROM router_scores rs JOIN samples s USING (sample_id)
    WHERE rs.sample_key IS NULL
      AND s.sample_id IN (SELECT sample_id FROM router_scores WHERE sample_key IS NULL)
), models AS MATERIALIZED (
    SELECT model, row_number() OVER (ORDER BY model) AS m
    FROM (SELECT DISTINCT model FROM shadow_calls WHERE error IS NULL)
), scorers AS MATERIALIZED (
    SELECT scorer, row_number() OVER (ORDER BY scorer) AS n
    FROM (SELECT DISTINCT coalesce(by_scorer, scorer) AS scorer FROM samples
          WHERE status = 'done' AND coalesce(by_scorer, scorer) IS NOT NULL)
), nk AS (
    SELECT (SELECT count(*) FROM models) AS nm, (SELECT count(*) FROM scorers) AS ns
), cm AS MATERIALIZED (
    -- completed_outcomes: each answered call joined with its score by the sample's scorer on
    -- one integer, (sample_key * models + m - 1) * scorers + n - 1 (dense, so a direct lookup,
    -- when every sample has every model and one scorer is used); `mk` is the (model, stratum)
    -- part of the sums' key, (m * hs + h) * 1024 (see `dims`)
    SELECT x.sample_key, (x.m * x.hs + x.h) * 1024 AS mk, q.value AS q, x.cf, x.cm
    FROM (SELECT (d.sample_key * nk.nm + models.m - 1) * nk.ns + scorers.n - 1 AS k,
                 (SELECT count(*) FROM strata) + 1 AS hs,
                 d.sample_key, models.m, d.h, d.cf, c.cost_usd AS cm
          FROM done d JOIN calls c ON c.sample_key = d.sample_key
          JOIN models ON models.model = c.model JOIN scorers ON scorers.scorer = d.scorer, nk) x
    JOIN (SELECT (q.sample_key * nk.nm + models.m - 1) * nk.ns + scorers.n - 1 AS k, q.value
          FROM quality q JOIN models ON models.model = q.model
          JOIN scorers ON scorers.scorer = q.scorer, nk) q ON q.k = x.k
), routers AS (
    SELECT router, row_number() OVER (ORDER BY router) AS r
    FROM (SELECT DISTINCT router FROM router_scores)
), th AS MATERIALIZED (
    -- the thresholds by bucket, bucket(x) = floor(x * 2^12) clamped to [-1, 2^12] (NaN in 2^12:
    -- DuckDB orders it above everything), which is monotone in x; at list position b + 2, for
    -- bucket b: `lo` the distinct thresholds in the buckets below and `t1` its own one (NaN:
    -- none). A score's bin is `lo` of its bucket plus its bucket's thresholds that are <= it.
    -- `crowded`: a bucket holds several (thresholds closer than 2^-12, or several outside
    -- [0, 1]); then each score is compared with every threshold of its bucket (in `tp`,
    -- sorted, from position lo + 1).
    SELECT list(below::INTEGER ORDER BY b) AS lo,
           list(coalesce(t1, 'NaN'::DOUBLE) ORDER BY b) AS t1,
           max(inside) > 1 AS crowded,
           (SELECT list_sort(list_distinct(thresholds::DOUBLE[]))) AS tp
    FROM (SELECT b, coalesce(sum(inside) OVER (ORDER BY b ROWS BETWEEN UNBOUNDED PRECEDING
                                                            AND 1 PRECEDING), 0) AS below,
                 inside, t1
          FROM (SELECT range::INTEGER AS b FROM range(-1, 4098))
          LEFT JOIN (SELECT least(greatest(floor(t * 4096), -1), 4096)::INTEGER AS b,
                            count(*) AS inside, min(t) AS t1
                     FROM (SELECT unnest(list_distinct(thresholds::DOUBLE[])) AS t) GROUP BY 1)
          USING (b))
), dims AS (
    -- radixes of the integer key ((r + 2) * mhs + m * hs + h) * 1024 + bin, the number of
    -- thresholds, and the bins of the reference policies' scores 0 and 1; all_cheap is r = -1,
    -- oracle r = -2
    SELECT (SELECT count(*) FROM strata) + 1 AS hs,
           ((SELECT count(*) FROM models) + 1) * ((SELECT count(*) FROM strata) + 1) AS mhs,
           (SELECT CASE WHEN count(*) > 1023
                        THEN error('savings: at most 1023 distinct thresholds per call, got '
                                   || count(*))
                        ELSE count(*) END FROM g) AS k,
           (SELECT count(*) FROM g WHERE threshold <= 0.0) AS b0,
           (SELECT count(*) FROM g WHERE threshold <= 1.0) AS b1
), binned AS (
    -- NULL scores as NaN: above every threshold, never cheap (as before). `i` is the bucket's
    -- list position b + 2. A bin is at most the number of distinct thresholds, which `dims`
    -- holds to 1023: the key's room.
    SELECT sample_key, router,
           CASE WHEN th.crowded
                THEN th.lo[i] + len(list_filter(th.tp[th.lo[i] + 1:th.lo[i + 1]],
                                                lambda t: t <= s))
                ELSE th.lo[i] + (th.t1[i] <= s)::INTEGER END AS bin
    FROM (SELECT sample_key, router, s,
                 least(greatest(floor(s * 4096 + 2), 1), 4098)::INTEGER AS i
          FROM (SELECT sample_key, router, coalesce(score, 'NaN'::DOUBLE) AS s FROM routes)), th
), sums AS (
    -- every (sample, router) row on its key
    SELECT rr.rk + cm.mk + b.bin AS key,
           count(*) AS k, sum(1.0 - cm.q) AS sl, sum((1.0 - cm.q) * (1.0 - cm.q)) AS sll,
           sum(cm.cm) AS scm, sum(cm.cm * cm.cm) AS scmm, sum(cm.cm * cm.cf) AS scmf,
           sum(cm.cf) AS scf, sum(cm.cf * cm.cf) AS scff
    FROM cm JOIN binned b ON b.sample_key = cm.sample_key
    JOIN (SELECT router, (routers.r + 2) * dims.mhs * 1024 AS rk FROM routers, dims) rr
      ON rr.router = b.router
    GROUP BY 1
), perfect AS (
    -- the outcomes' totals per (model, stratum, q = 1), for the reference policies
    SELECT mk // 1024 AS mh, q >= 1.0 AS perfect, count(*) AS k, sum(1.0 - q) AS sl,
           sum((1.0 - q) * (1.0 - q)) AS sll, sum(cm) AS scm, sum(cm * cm) AS scmm,
           sum(cm * cf) AS scmf, sum(cf) AS scf, sum(cf * cf) AS scff
    FROM cm GROUP BY ALL
), by_bin AS MATERIALIZED (
    SELECT key // 1024 AS cell, key % 1024 AS bin, k, sl, sll, scm, scmm, scmf, scf, scff
    FROM sums
    UNION ALL
    -- all_cheap (r = -1) sends every sample to the bin of score 0, oracle (r = -2) those that
    -- scored 1 to the bin of score 0 and the others to the bin of score 1
    SELECT cell, bin, sum(k), sum(sl), sum(sll), sum(scm), sum(scmm), sum(scmf), sum(scf),
           sum(scff)
    FROM (SELECT dims.mhs + mh AS cell, dims.b0 AS bin, p.* EXCLUDE (mh, perfect)
          FROM perfect p, dims
          UNION ALL
          SELECT mh, CASE WHEN perfect THEN dims.b0 ELSE dims.b1 END, p.* EXCLUDE (mh, perfect)
          FROM perfect p, dims)
    GROUP BY cell, bin
), tot AS (
    SELECT cell, sum(k) AS n, sum(scf) AS sf, sum(scff) AS sff FROM by_bin GROUP BY cell
), cum AS (
    -- running sums over every bin below the last threshold (bins without samples too, so
    -- that threshold j finds bin j - 1 by an equi-join)
    SELECT t.cell, d.bin,
           sum(coalesce(x.k, 0)) OVER w AS k, sum(coalesce(x.sl, 0.0)) OVER w AS sl,
           sum(coalesce(x.sll, 0.0)) OVER w AS sll, sum(coalesce(x.scm, 0.0)) OVER w AS scm,
           sum(coalesce(x.scmm, 0.0)) OVER w AS scmm, sum(coalesce(x.scmf, 0.0)) OVER w AS scmf,
           sum(coalesce(x.scf, 0.0)) OVER w AS scf, sum(coalesce(x.scff, 0.0)) OVER w AS scff
    FROM tot t CROSS JOIN (SELECT unnest(range(k)) AS bin FROM dims) d
    LEFT JOIN by_bin x ON x.cell = t.cell AND x.bin = d.bin
    WINDOW w AS (PARTITION BY t.cell ORDER BY d.bin ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
), grid AS (
    -- every threshold given, once (a NULL one sends nothing cheap)
    SELECT tot.*, g0.threshold, coalesce(g.j, 0) AS j
    FROM tot CROSS JOIN (SELECT DISTINCT unnest(thresholds)::DOUBLE AS threshold) g0
    LEFT JOIN g ON g.threshold = g0.threshold
), r AS (
    SELECT grid.cell // dims.mhs - 2 AS r, (grid.cell % dims.mhs) // dims.hs AS m,
           grid.cell % dims.hs AS h, grid.threshold, grid.n, grid.sf, grid.sff,
           coalesce(u.k, 0) AS k, coalesce(u.sl, 0.0) AS sl,
           coalesce(u.sll, 0.0) AS sll, coalesce(u.scm, 0.0) AS scm,
           coalesce(u.scmm, 0.0) AS scmm, coalesce(u.scmf, 0.0) AS scmf,
           coalesce(u.scf, 0.0) AS scf, coalesce(u.scff, 0.0) AS scff
    FROM grid LEFT JOIN cum u ON u.cell = grid.cell AND u.bin = grid.j - 1, dims
)
SELECT CASE r.r WHEN -1 THEN 'all_cheap' WHEN -2 THEN 'oracle' ELSE routers.router END AS router,
       r.threshold, models.model, strata.stratum,
       split_part(strata.stratum, '|', 2) AS segment, strata.win AS window_start,
       strata.big_n, r.n,
       r.sl, r.sll,
       (r.n - r.k)::DOUBLE AS ss,
       -- plus the router's own cost on every request it scores (`router_costs`: 0 when none)
       r.scm + r.sf - r.scf + r.n * coalesce(rc.usd_per_call, 0.0) AS sc,
       r.scmm + r.sff - r.scff + 2 * coalesce(rc.usd_per_call, 0.0) * (r.scm + r.sf - r.scf)
         + r.n * pow(coalesce(rc.usd_per_call, 0.0), 2) AS scc,
       r.scmf + r.sff - r.scff + coalesce(rc.usd_per_call, 0.0) * r.sf AS scf,
       r.sf, r.sff,
       strata.frontier_usd,
       -- the stratum means of before (routed quality, its variance, routed and frontier cost,
       -- strong share), for anyone who read them
       1.0 - r.sl / r.n AS mq,
       CASE WHEN r.n > 1 THEN greatest(0.0, (r.sll - r.sl * r.sl / r.n) / (r.n - 1))
            ELSE 0.25 END AS vq,
       (r.scm + r.sf - r.scf) / r.n + coalesce(rc.usd_per_call, 0.0) AS mc,
       r.sf / r.n AS mcf,
       (r.n - r.k) / r.n AS ms
FROM r JOIN strata USING (h) JOIN models USING (m) LEFT JOIN routers USING (r)
LEFT JOIN router_costs rc ON rc.router = routers.router;

-- name: schema_12a2_cascade_strata
-- The rows of `routed_strata` for the cascades (`[[cascades]]`, FrugalGPT): the cheap model
-- answers every request; its answer is kept when the cascade's router score 1 - accept is
-- below the threshold (accept > 1 - t), else the request is escalated to the frontier model,
-- paying both: routed cost c = kept ? c^m : c^m + c^F, quality q when kept, 1 when escalated,
-- "strong" = escalated. A plain join of every sample with every threshold: cascades are few.
-- Not per window (`width` gives no rows): cascades are estimated over all time.
CREATE OR REPLACE MACRO cascade_strata(thresholds, width := NULL, by_scorer := NULL) AS TABLE
WITH strata AS (
    SELECT stratum, big_n, frontier_usd FROM population()
), o AS (
    SELECT s.stratum, x.model, sc.value AS q, s.frontier_cost_usd AS cf, x.cost_usd AS cm,
           cs.cascade, cs.accept
    FROM samples s
    JOIN shadow_calls x ON x.sample_id = s.sample_id AND x.error IS NULL
    JOIN scores sc ON sc.sample_id = s.sample_id AND sc.model = x.model
        AND sc.scorer = coalesce(by_scorer, s.scorer) AND sc.value IS NOT NULL
    JOIN cascade_scores cs ON cs.sample_id = s.sample_id AND cs.model = x.model
    WHERE s.status = 'done' AND width IS NULL
), r AS (
    SELECT o.cascade AS router, t.threshold, o.model, o.stratum, o.q, o.cf,
           coalesce(1.0 - o.accept < t.threshold, false) AS kept,
           CASE WHEN coalesce(1.0 - o.accept < t.threshold, false) THEN o.cm
                ELSE o.cm + o.cf END AS c
    FROM o, (SELECT DISTINCT unnest(thresholds)::DOUBLE AS threshold) t
), a AS (
    SELECT router, threshold, model, stratum, count(*) AS n,
           sum(CASE WHEN kept THEN 1.0 - q ELSE 0.0 END) AS sl,
           sum(CASE WHEN kept THEN (1.0 - q) * (1.0 - q) ELSE 0.0 END) AS sll,
           count(*) FILTER (WHERE NOT kept)::DOUBLE AS ss,
           sum(c) AS sc, sum(c * c) AS scc, sum(c * cf) AS scf, sum(cf) AS sf, sum(cf * cf) AS sff
    FROM r GROUP BY router, threshold, model, stratum
)
SELECT a.router, a.threshold, a.model, a.stratum, split_part(a.stratum, '|', 2) AS segment,
       NULL::TIMESTAMP AS window_start, st.big_n, a.n, a.sl, a.sll, a.ss, a.sc, a.scc, a.scf,
       a.sf, a.sff, st.frontier_usd,
       1.0 - a.sl / a.n AS mq,
       CASE WHEN a.n > 1 THEN greatest(0.0, (a.sll - a.sl * a.sl / a.n) / (a.n - 1))
            ELSE 0.25 END AS vq,
       a.sc / a.n AS mc, a.sf / a.n AS mcf, a.ss / a.n AS ms
FROM a JOIN strata st USING (stratum);

-- name: schema_12a3_tier_choices
-- Multi-tier policies (`[[policies]]`, `tier_policies`, see analytics/tiers.py), per (policy,
-- setting, sample): the first tier whose rule takes the request (`tier` NULL: the frontier
-- model), its loss l = 1 - q (0 on the frontier), strong = sent to the frontier, the routed cost
-- c = c^m of that tier's model (c^F on the frontier) plus every consulted router's own cost
-- (`router_costs`), and the frontier cost cf. A policy is estimated on the samples every one of
-- its models answered and was scored on: the same samples at every setting. `sweep` false: the
-- configured setting (number 0) only.
CREATE OR REPLACE MACRO tier_choices(sweep, width := NULL, by_scorer := NULL) AS TABLE
WITH tp AS (
    SELECT * FROM tier_policies WHERE setting = 0 OR sweep
), pm AS (
    SELECT policy, tier, model, router FROM tier_policies WHERE setting = 0
), pk AS (
    SELECT policy, count(*) AS k FROM pm GROUP BY policy
), rc AS (
    -- the routers a policy consults, each paid on every request
    SELECT p.policy, sum(coalesce(c.usd_per_call, 0.0)) AS usd
    FROM (SELECT DISTINCT policy, router FROM pm) p LEFT JOIN router_costs c USING (router)
    GROUP BY p.policy
), done AS (
    -- with a `width`, the window of production time (date_trunc(NULL, ts) is NULL: one window)
    SELECT s.sample_id, s.stratum, date_trunc(width, r.ts) AS win,
           coalesce(by_scorer, s.scorer) AS scorer, s.frontier_cost_usd AS cf
    FROM samples s LEFT JOIN requests r ON r.request_id = s.sample_id
    WHERE s.status = 'done' AND (width IS NULL OR r.ts IS NOT NULL)
      AND EXISTS (SELECT 1 FROM tier_policies)
), o AS (
    -- each tier model's answered and scored call per sample
    SELECT d.sample_id, x.model, sc.value AS q, x.cost_usd AS cm
    FROM done d
    JOIN shadow_calls x ON x.sample_id = d.sample_id AND x.error IS NULL
    JOIN scores sc ON sc.sample_id = d.sample_id AND sc.model = x.model
        AND sc.scorer = d.scorer AND sc.value IS NOT NULL
    WHERE x.model IN (SELECT model FROM pm)
), covered AS (
    SELECT pm.policy, o.sample_id
    FROM pm JOIN o ON o.model = pm.model JOIN pk ON pk.policy = pm.policy
    GROUP BY pm.policy, o.sample_id
    HAVING count(*) = any_value(pk.k)
), ch AS (
    -- a sample without a score from a tier's router does not pass that tier
    SELECT tp.policy, tp.setting, c.sample_id,
           min(tp.tier) FILTER (WHERE CASE WHEN tp.on_success THEN 1.0 - rs.score >= tp.threshold
                                          ELSE rs.score < tp.threshold END) AS tier
    FROM covered c JOIN tp ON tp.policy = c.policy
    LEFT JOIN router_scores rs ON rs.sample_id = c.sample_id AND rs.router = tp.router
    GROUP BY tp.policy, tp.setting, c.sample_id
)
SELECT ch.policy, ch.setting, ch.sample_id, d.stratum, d.win, ch.tier, pm.model,
       ch.tier IS NULL AS strong,
       CASE WHEN ch.tier IS NULL THEN 0.0 ELSE 1.0 - o.q END AS l,
       CASE WHEN ch.tier IS NULL THEN d.cf ELSE o.cm END + rc.usd AS c, d.cf
FROM ch JOIN done d ON d.sample_id = ch.sample_id JOIN rc ON rc.policy = ch.policy
LEFT JOIN pm ON pm.policy = ch.policy AND pm.tier = ch.tier
LEFT JOIN o ON o.sample_id = ch.sample_id AND o.model = pm.model;

-- name: schema_12a4_tier_strata
-- The rows of `routed_strata` for the multi-tier policies (`tier_choices`): `sweep` false, the
-- configured setting under the policy's name; true, every setting as `policy#setting`.
-- `model` lists the tiers, cheapest first: `a>b`.
CREATE OR REPLACE MACRO tier_strata(sweep, width := NULL, by_scorer := NULL) AS TABLE
WITH strata AS (
    SELECT stratum, win, big_n, frontier_usd FROM population(width := width)
    WHERE EXISTS (SELECT 1 FROM tier_policies)
), pk AS (
    SELECT policy, string_agg(model, '>' ORDER BY tier) AS models
    FROM tier_policies WHERE setting = 0 GROUP BY policy
), a AS (
    SELECT policy, setting, stratum, win, count(*) AS n, sum(l) AS sl, sum(l * l) AS sll,
           count(*) FILTER (WHERE strong)::DOUBLE AS ss, sum(c) AS sc, sum(c * c) AS scc,
           sum(c * cf) AS scf, sum(cf) AS sf, sum(cf * cf) AS sff
    FROM tier_choices(sweep, width := width, by_scorer := by_scorer) GROUP BY ALL
)
SELECT CASE WHEN sweep THEN a.policy || '#' || a.setting ELSE a.policy END AS router,
       NULL::DOUBLE AS threshold, pk.models AS model, a.stratum,
       split_part(a.stratum, '|', 2) AS segment, a.win AS window_start, st.big_n, a.n,
       a.sl, a.sll, a.ss, a.sc, a.scc, a.scf, a.sf, a.sff, st.frontier_usd,
       1.0 - a.sl / a.n AS mq,
       CASE WHEN a.n > 1 THEN greatest(0.0, (a.sll - a.sl * a.sl / a.n) / (a.n - 1))
            ELSE 0.25 END AS vq,
       a.sc / a.n AS mc, a.sf / a.n AS mcf, a.ss / a.n AS ms
FROM a JOIN pk USING (policy)
JOIN strata st ON st.stratum = a.stratum AND st.win IS NOT DISTINCT FROM a.win;

-- name: schema_12b_grouped_savings_at
-- Stratified estimates for every (router, threshold, model) at the given thresholds, per
-- segment (the stratifying tag's value, e.g. task type) when by_segment, else over all
-- traffic, with two-sided intervals at the normal quantile z (1.96: 95%); the same figures as
-- analytics.intervals.analytic (see there and docs/architecture.md "The estimator"):
-- quality and strong share by Wilson with Kish's effective n and Jeffreys' half observations
-- per stratum, savings and dollars by the delta method for the ratio, all with the
-- finite-population correction. quality_se is the plain stratified standard error (strata with
-- one sample count as maximal variance 0.25), kept for readers of earlier versions.
-- `by_scorer` estimates with another scorer's values (one of `scoring.also`, e.g.
-- 'embedding_cosine') instead of each sample's own; samples without that score are left out.
-- `floor`, `floor_samples`, `quality_vs_floor`: the noise floor of the group (see
-- `quality_vs_floor`), by the same scorer; NULL where none was scored.
-- Multi-tier policies (`tier_strata`) come as their configured setting, threshold NULL;
-- `tier_sweep` gives every setting of their sweep instead, named `policy#setting`.
CREATE OR REPLACE MACRO grouped_savings_at(thresholds, by_segment, z := 1.959963984540054,
                                           width := NULL, by_scorer := NULL,
                                           tier_sweep := false) AS TABLE
WITH g AS (
    SELECT *, CASE WHEN by_segment THEN segment END AS grp,
           greatest(0.0, 1.0 - n / big_n) AS fpc,
           sum(big_n * sc / n) OVER w / nullif(sum(big_n * sf / n) OVER w, 0) AS ratio
    FROM (SELECT * FROM routed_strata(thresholds, width := width, by_scorer := by_scorer)
          UNION ALL BY NAME
          SELECT * FROM cascade_strata(thresholds, width := width, by_scorer := by_scorer)
          UNION ALL BY NAME
          SELECT * FROM tier_strata(tier_sweep, width := width, by_scorer := by_scorer))
    WINDOW w AS (PARTITION BY router, threshold, model, window_start,
                 CASE WHEN by_segment THEN segment END)
), h AS (
    SELECT *,
           -- a stratum whose samples all agree takes Jeffreys' regularised variance
           (sl + 0.5) / (n + 1) AS ml_reg,
           CASE WHEN sll / n - pow(sl / n, 2) > 1e-15 THEN sll / n - pow(sl / n, 2)
                ELSE greatest(0.0, (sll + 0.5) / (n + 1) - pow((sl + 0.5) / (n + 1), 2))
           END AS vl_reg,
           (ss + 0.5) / (n + 1) AS ms_reg,
           CASE WHEN ss / n - pow(ss / n, 2) > 1e-15 THEN ss / n - pow(ss / n, 2)
                ELSE greatest(0.0, (ss + 0.5) / (n + 1) - pow((ss + 0.5) / (n + 1), 2))
           END AS vs_reg,
           -- residuals of the ratio e = c - R f, and of the dollars d = f - c
           sc - ratio * sf AS se, scc - 2 * ratio * scf + ratio * ratio * sff AS see,
           sf - sc AS sd, sff - 2 * scf + scc AS sdd
    FROM g
), a AS (
    SELECT router, threshold, model, window_start, grp AS segment,
           count(*) AS strata,
           sum(n)::BIGINT AS samples,
           sum(big_n)::BIGINT AS requests,
           sum(big_n * sl / n) / sum(big_n) AS loss,
           sqrt(sum(big_n * big_n * vq / n)) / sum(big_n) AS quality_se,
           any_value(ratio) AS ratio,
           sum(big_n * ss / n) / sum(big_n) AS strong_share,
           sum(big_n * sf / n) AS frontier_est,
           sum(big_n * sc / n) AS routed_est,
           CASE WHEN count(frontier_usd) = count(*) THEN sum(frontier_usd) END AS frontier_exact,
           -- z^2 / Kish's effective n, for the Wilson intervals
           z * z * sum(big_n * big_n * fpc * vl_reg / n) / pow(sum(big_n), 2)
             / (sum(big_n * ml_reg) / sum(big_n) * (1 - sum(big_n * ml_reg) / sum(big_n))) AS kl,
           z * z * sum(big_n * big_n * fpc * vs_reg / n) / pow(sum(big_n), 2)
             / (sum(big_n * ms_reg) / sum(big_n) * (1 - sum(big_n * ms_reg) / sum(big_n))) AS ks,
           z * sqrt(sum(big_n * big_n * fpc * greatest(0.0, CASE WHEN n > 1
                 THEN (see - se * se / n) / (n - 1) ELSE see / n END) / n))
             / nullif(sum(big_n * sf / n), 0) AS half_ratio,
           z * sqrt(sum(big_n * big_n * fpc * greatest(0.0, CASE WHEN n > 1
                 THEN (sdd - sd * sd / n) / (n - 1) ELSE sdd / n END) / n)) AS half_usd
    FROM h GROUP BY router, threshold, model, window_start, grp
), b AS (
    SELECT *, coalesce(frontier_exact, frontier_est) AS frontier_usd,
           CASE WHEN frontier_exact IS NOT NULL THEN (1 - ratio) * frontier_exact
                ELSE frontier_est - routed_est END AS saved,
           -- Wilson: centre (p + k/2) / (1 + k), half sqrt(k p (1 - p) + k^2 / 4) / (1 + k)
           (loss + kl / 2) / (1 + kl) AS cl, sqrt(kl * loss * (1 - loss) + kl * kl / 4) / (1 + kl) AS hl,
           (strong_share + ks / 2) / (1 + ks) AS cs,
           sqrt(ks * strong_share * (1 - strong_share) + ks * ks / 4) / (1 + ks) AS hs
    FROM a
), fl AS (
    -- the noise floor of the group (the frontier against its own production answer, by the
    -- scorer the quality uses), over all time: NULL where no floor sample was scored
    SELECT CASE WHEN by_segment THEN split_part(s.stratum, '|', 2) END AS segment,
           avg(f.value) AS floor, count(*) AS floor_samples
    FROM noise_floor f JOIN samples s USING (sample_id)
    WHERE f.value IS NOT NULL AND f.scorer = coalesce(by_scorer, s.scorer)
    GROUP BY 1
)
SELECT router, threshold, model, window_start, b.segment, strata, samples, requests,
       1 - loss AS quality, quality_se,
       1 - ratio AS savings, strong_share, frontier_usd,
       frontier_usd - saved AS routed_usd,
       saved AS projected_usd_saved,
       greatest(0.0, 1 - least(1.0, cl + hl)) AS quality_lower,
       least(1.0, 1 - greatest(0.0, cl - hl)) AS quality_upper,
       1 - ratio - half_ratio AS savings_lower,
       1 - ratio + half_ratio AS savings_upper,
       greatest(0.0, cs - hs) AS strong_share_lower,
       least(1.0, cs + hs) AS strong_share_upper,
       CASE WHEN frontier_exact IS NOT NULL THEN (1 - ratio - half_ratio) * frontier_exact
            ELSE saved - half_usd END AS projected_usd_saved_lower,
       CASE WHEN frontier_exact IS NOT NULL THEN (1 - ratio + half_ratio) * frontier_exact
            ELSE saved + half_usd END AS projected_usd_saved_upper,
       frontier_exact IS NOT NULL AS frontier_usd_exact,
       fl.floor, coalesce(fl.floor_samples, 0) AS floor_samples,
       CASE WHEN fl.floor > 0 THEN least(1.0, (1 - loss) / fl.floor) END AS quality_vs_floor
FROM b LEFT JOIN fl ON fl.segment IS NOT DISTINCT FROM b.segment;

-- name: schema_12c_savings_at
CREATE OR REPLACE MACRO savings_at(thresholds, z := 1.959963984540054, by_scorer := NULL) AS TABLE
SELECT * EXCLUDE (segment, window_start)
FROM grouped_savings_at(thresholds, false, z := z, by_scorer := by_scorer);

-- name: schema_12d_segment_savings_at
CREATE OR REPLACE MACRO segment_savings_at(thresholds, z := 1.959963984540054,
                                           by_scorer := NULL) AS TABLE
SELECT * EXCLUDE (window_start)
FROM grouped_savings_at(thresholds, true, z := z, by_scorer := by_scorer);

-- name: schema_12e_window_savings_at
-- Estimates per window of production time: `width` is a date_trunc part ('hour', 'day', ...)
-- and `window_start` the window's start (date_trunc(width, ts) of the sample's request).
-- Each window is estimated for its own traffic, as the gate's --window does: N_h is the
-- stratum's eligible requests in that window and the frontier spend is the window's, exactly;
-- requests without a time are left out. The same columns and intervals as savings_at.
CREATE OR REPLACE MACRO window_savings_at(width, thresholds, z := 1.959963984540054,
                                          by_scorer := NULL) AS TABLE
SELECT width AS width, window_start, * EXCLUDE (segment, window_start)
FROM grouped_savings_at(thresholds, false, z := z, width := width, by_scorer := by_scorer);

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

-- name: schema_13c_window_savings
-- Per hour and per day of production time: every router on the grid, and the reference
-- policies (threshold NULL; all_cheap and oracle are the same at every threshold in (0, 1]),
-- e.g. SELECT * FROM window_savings WHERE width = 'day' AND router = 'all_cheap'.
CREATE OR REPLACE VIEW window_savings AS
SELECT * REPLACE (CASE WHEN router IN ('all_cheap', 'oracle') THEN NULL
                       ELSE threshold END AS threshold)
FROM (SELECT * FROM window_savings_at('hour', [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35,
                                                0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75,
                                                0.8, 0.85, 0.9, 0.95, 1.0])
      UNION ALL
      SELECT * FROM window_savings_at('day', [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35,
                                               0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75,
                                               0.8, 0.85, 0.9, 0.95, 1.0]))
WHERE router NOT IN ('all_cheap', 'oracle') OR threshold = 0.5;

-- name: schema_14_strata
-- Traffic, samples and weights per stratum and cheap model.
CREATE OR REPLACE VIEW strata AS
WITH r AS (
    SELECT stratum, sum(requests)::BIGINT AS requests, sum(eligible)::BIGINT AS eligible,
           sum(sampled)::BIGINT AS sampled, any_value(sample_rate) AS sample_rate,
           sum(frontier_usd) AS frontier_usd
    FROM (SELECT stratum, count(*) AS requests, count(*) FILTER (WHERE eligible) AS eligible,
                 count(*) FILTER (WHERE sampled) AS sampled, any_value(sample_rate) AS sample_rate,
                 sum(cost_usd) AS frontier_usd
          FROM requests GROUP BY stratum
          UNION ALL  -- rows retention rolled up (never sampled ones: those stay in `requests`)
          SELECT stratum, sum(requests), sum(requests) FILTER (WHERE eligible), 0, NULL,
                 sum(cost_usd)
          FROM request_rollups GROUP BY stratum)
    GROUP BY stratum
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

-- name: schema_50_router_pgr
-- RouteLLM's metrics per (router, model) on the savings grid (analytics/curves.py has them
-- with bootstrap intervals): PGR = (quality - q_weak) / (1 - q_weak), q_weak the quality of
-- all_cheap; APGR the area under PGR against strong share, closed by (0, 0) and (1, 1);
-- CPT(x) the smallest strong share on the grid reaching PGR >= x. Reference rows:
-- random_expected (a random router recovers the share it sends strong: APGR 1/2, CPT(x) = x)
-- and oracle (the gap closed at its strong share c: APGR 1 - c/2, CPT(x) = x c).
CREATE OR REPLACE VIEW router_pgr AS
SELECT s.router, s.threshold, s.model, s.strong_share, s.quality,
       (s.quality - w.quality) / nullif(1 - w.quality, 0) AS pgr
FROM savings s JOIN savings w ON w.model = s.model AND w.router = 'all_cheap'
WHERE s.router NOT IN ('all_cheap', 'oracle');

-- name: schema_51_router_metrics
CREATE OR REPLACE VIEW router_metrics AS
WITH pts AS (
    SELECT router, model, strong_share AS x, pgr AS y FROM router_pgr
    UNION ALL
    SELECT DISTINCT router, model, 0.0, 0.0 FROM router_pgr
    UNION ALL
    SELECT DISTINCT router, model, 1.0, 1.0 FROM router_pgr
), seg AS (
    SELECT *, lag(x) OVER w AS px, lag(y) OVER w AS py
    FROM pts WINDOW w AS (PARTITION BY router, model ORDER BY x, y)
)
SELECT router, model, sum((x - px) * (y + py) / 2) AS apgr,
       min(x) FILTER (WHERE y >= 0.5 - 1e-12) AS cpt_50,
       min(x) FILTER (WHERE y >= 0.8 - 1e-12) AS cpt_80
FROM seg GROUP BY ALL
UNION ALL
SELECT 'random_expected', model, 0.5, 0.5, 0.8 FROM savings WHERE router = 'all_cheap'
UNION ALL
SELECT 'oracle', model, 1 - strong_share / 2, 0.5 * strong_share, 0.8 * strong_share
FROM savings WHERE router = 'oracle';

-- name: schema_70_router_calls
-- Every call to a router, with its latency and, when it gave no score, why (an external
-- router's timeout, HTTP error or unusable answer): the sample has no score from it then.
--   SELECT router, count(*), count(error), median(latency_ms) FROM router_calls GROUP BY ALL
CREATE TABLE IF NOT EXISTS router_calls (
    sample_id  VARCHAR NOT NULL,
    router     VARCHAR NOT NULL,
    latency_ms DOUBLE NOT NULL,
    error      VARCHAR,
    called_at  TIMESTAMP DEFAULT current_timestamp
);

-- name: schema_71_noise_floor
-- The frontier model asked again, in shadow, on a share of samples (`shadow.noise_floor`), and
-- its answer scored against the production answer by the sample's scorer: how often the
-- frontier agrees with itself. NULL value: the call failed (`error`) or the scorer could not
-- judge the pair (`score_error`).
CREATE TABLE IF NOT EXISTS noise_floor (
    sample_id           VARCHAR PRIMARY KEY,
    model               VARCHAR NOT NULL,   -- the frontier model, as the logs name it
    answer              VARCHAR,
    input_tokens        BIGINT,
    cached_input_tokens BIGINT,
    output_tokens       BIGINT,
    cost_usd            DOUBLE,
    spend_usd           DOUBLE,             -- what the shadow budget was charged for it
    latency_ms          DOUBLE,
    error               VARCHAR,
    outcome             VARCHAR,
    scorer              VARCHAR,
    scorer_used         VARCHAR,
    value               DOUBLE,
    score_error         VARCHAR,
    called_at           TIMESTAMP DEFAULT current_timestamp
);

-- name: schema_72_noise_floor_by_segment
-- The floor per (stratum, scorer used): the frontier's mean score against its own production
-- answer, over the samples where it was asked again and scored.
CREATE OR REPLACE VIEW noise_floor_by_segment AS
SELECT s.stratum, f.scorer_used, count(*) AS n, avg(f.value) AS floor,
       stddev_samp(f.value) / sqrt(count(*)) AS floor_se
FROM noise_floor f JOIN samples s USING (sample_id)
WHERE f.value IS NOT NULL
GROUP BY ALL;

-- name: schema_73_quality_vs_floor
-- Each cheap model's mean quality per stratum, raw and relative to the frontier's own floor
-- there (by the same scorers): a stratum where the frontier disagrees with itself 20% of the
-- time does not condemn a cheap model that disagrees 20% of the time. `floor` is NULL where no
-- floor sample was scored yet.
CREATE OR REPLACE VIEW quality_vs_floor AS
WITH q AS (
    SELECT s.stratum, c.model, count(*) AS n, avg(c.q) AS quality
    FROM completed_outcomes c JOIN samples s USING (sample_id)
    GROUP BY ALL
), f AS (
    SELECT s.stratum, count(*) AS floor_n, avg(nf.value) AS floor
    FROM noise_floor nf JOIN samples s USING (sample_id)
    WHERE nf.value IS NOT NULL
    GROUP BY ALL
)
SELECT q.stratum, q.model, q.n, q.quality, f.floor_n, f.floor,
       CASE WHEN f.floor > 0 THEN least(1.0, q.quality / f.floor) END AS quality_vs_floor
FROM q LEFT JOIN f USING (stratum);

-- name: schema_80_sample_key_seq
-- Issue 19: an integer key per sample, written with every row of the tables the savings curve
-- joins (samples, shadow_calls, scores, router_scores), so that `routed_strata` joins them on
-- one integer column rather than the VARCHAR sample_id (the curve over 1M samples took 3x as
-- long on sample_id). Numbered in insertion order, so the keys of the samples are dense.
CREATE SEQUENCE IF NOT EXISTS sample_key_seq;

-- name: schema_81_samples_sample_key
-- Given at insertion (also to the rows of an existing file, when the column is added).
ALTER TABLE samples ADD COLUMN IF NOT EXISTS sample_key BIGINT DEFAULT nextval('sample_key_seq');

-- name: schema_82_shadow_calls_sample_key
-- The sample's key: written by `Store.write_results` (the runner carries it from the pending
-- sample); NULL where a row was written without it, which the curve then finds by sample_id
-- until the next open fills it in (schema_85).
ALTER TABLE shadow_calls ADD COLUMN IF NOT EXISTS sample_key BIGINT;

-- name: schema_83_scores_sample_key
ALTER TABLE scores ADD COLUMN IF NOT EXISTS sample_key BIGINT;

-- name: schema_84_router_scores_sample_key
ALTER TABLE router_scores ADD COLUMN IF NOT EXISTS sample_key BIGINT;

-- name: schema_85_shadow_calls_fill_sample_key
-- Rows without a key (a file of before the key, rows written by hand) get their sample's. Cheap
-- at every open once done: the samples are looked up first with IN, which reads nothing when no
-- row lacks a key (a plain join read every sample_id: 0.5 s at each open of 1M samples).
UPDATE shadow_calls SET sample_key = s.sample_key FROM samples s
WHERE shadow_calls.sample_key IS NULL AND s.sample_id = shadow_calls.sample_id
  AND s.sample_id IN (SELECT sample_id FROM shadow_calls WHERE sample_key IS NULL);

-- name: schema_86_scores_fill_sample_key
UPDATE scores SET sample_key = s.sample_key FROM samples s
WHERE scores.sample_key IS NULL AND s.sample_id = scores.sample_id
  AND s.sample_id IN (SELECT sample_id FROM scores WHERE sample_key IS NULL);

-- name: schema_87_router_scores_fill_sample_key
UPDATE router_scores SET sample_key = s.sample_key FROM samples s
WHERE router_scores.sample_key IS NULL AND s.sample_id = router_scores.sample_id
  AND s.sample_id IN (SELECT sample_id FROM router_scores WHERE sample_key IS NULL);

-- name: schema_90_judge_calls
-- Every question to the LLM judge (`shadow.judge`): which answer (sample, model) it judged, how
-- (`grade`, or `pairwise` with the judged answer's position), the prompt template's version,
-- the judge's raw output, what was parsed from it (a 1-10 grade, or the verdict for the judged
-- answer: cheap | frontier | tie) or why nothing could be, and the call's cost. The score the
-- judge gave is in `scores` (scorer `judge`); a call that failed (`error`: budget, endpoint
-- down) or could not be parsed gives no score there.
--   SELECT judge, mode, count(*), count(parse_error), sum(spend_usd) FROM judge_calls GROUP BY ALL
CREATE TABLE IF NOT EXISTS judge_calls (
    sample_id       VARCHAR NOT NULL,
    model           VARCHAR NOT NULL,   -- whose answer was judged
    judge           VARCHAR NOT NULL,
    mode            VARCHAR NOT NULL,   -- grade | pairwise
    position        VARCHAR,            -- pairwise: cheap_first | cheap_second
    template        VARCHAR NOT NULL,
    output          VARCHAR,            -- the judge's raw output
    grade           DOUBLE,
    verdict         VARCHAR,
    parse_error     VARCHAR,
    candidate_chars BIGINT,
    reference_chars BIGINT,
    input_tokens    BIGINT,
    output_tokens   BIGINT,
    cost_usd        DOUBLE,
    spend_usd       DOUBLE,             -- what the shadow budget was charged for it
    latency_ms      DOUBLE,
    error           VARCHAR,
    outcome         VARCHAR,
    attempts        INTEGER,
    called_at       TIMESTAMP DEFAULT current_timestamp
);

-- name: schema_91_judge_summary
-- Per judge and way of asking: calls, what they gave, and their spend (shown apart from the
-- cheap models' spend, which `shadow_calls` holds; both come out of the same budget).
CREATE OR REPLACE VIEW judge_summary AS
SELECT judge, mode, template, count(*) AS calls,
       count(*) FILTER (WHERE grade IS NOT NULL OR verdict IS NOT NULL) AS parsed,
       count(parse_error) AS unparseable,
       count(*) FILTER (WHERE error IS NOT NULL) AS failed,
       count(*) FILTER (WHERE outcome = 'budget') AS skipped_budget,
       avg(grade) AS mean_grade,
       sum(coalesce(spend_usd, cost_usd, 0)) AS spend_usd,
       median(latency_ms) FILTER (WHERE error IS NULL) AS median_latency_ms
FROM judge_calls GROUP BY ALL;

-- name: schema_92_judge_pairs
-- Each answer asked about pairwise, with the verdict of each order (NULL: that call gave none).
CREATE OR REPLACE VIEW judge_pairs AS
SELECT sample_id, model, judge,
       any_value(verdict) FILTER (WHERE position = 'cheap_first') AS first,
       any_value(verdict) FILTER (WHERE position = 'cheap_second') AS second
FROM judge_calls WHERE mode = 'pairwise'
GROUP BY ALL;

-- name: schema_93_judge_pairwise
-- Pairwise verdicts per (judged model, stratum): each answer was asked about in both orders;
-- the same winner twice wins, any disagreement is a tie (MT-Bench's rule). `inconsistent`
-- counts the ties that were disagreements.
CREATE OR REPLACE VIEW judge_pairwise AS
SELECT p.judge, p.model, s.stratum, count(*) AS pairs,
       count(*) FILTER (WHERE first = 'cheap' AND second = 'cheap') AS cheap_wins,
       count(*) FILTER (WHERE first = second AND first = 'tie' OR first <> second) AS ties,
       count(*) FILTER (WHERE first = 'frontier' AND second = 'frontier') AS frontier_wins,
       count(*) FILTER (WHERE first <> second) AS inconsistent,
       (count(*) FILTER (WHERE first = 'cheap' AND second = 'cheap')
        + 0.5 * count(*) FILTER (WHERE first = second AND first = 'tie' OR first <> second))
         / count(*) AS cheap_win_rate
FROM judge_pairs p JOIN samples s USING (sample_id)
WHERE first IS NOT NULL AND second IS NOT NULL
GROUP BY ALL;

-- name: schema_94_judge_bias
-- How the judge leans, measured on its own verdicts rather than assumed, per judge:
-- * position: among its pairwise verdicts that named a winner, the share that named the answer
--   shown first, minus 0.5 (0: no lean; +0.5: always the first), and the share of pairs whose
--   two orders disagree;
-- * length: among verdicts that named a winner between answers of different lengths, the share
--   won by the longer one, minus 0.5; and, for grades, the correlation of the grade with the
--   log ratio of the graded answer's length to the reference's.
CREATE OR REPLACE VIEW judge_bias AS
WITH v AS (
    SELECT judge, verdict, position, candidate_chars AS c, reference_chars AS r,
           (position = 'cheap_first') = (verdict = 'cheap') AS first_won
    FROM judge_calls WHERE mode = 'pairwise' AND verdict IN ('cheap', 'frontier')
), p AS (
    SELECT judge, count(*) AS decisive_verdicts,
           avg(first_won::INT) - 0.5 AS position_bias,
           count(*) FILTER (WHERE c <> r) AS length_verdicts,
           avg(((verdict = 'cheap') = (c > r))::INT) FILTER (WHERE c <> r) - 0.5 AS length_bias
    FROM v GROUP BY ALL
), i AS (
    SELECT judge, count(*) AS pairs, avg((first <> second)::INT) AS inconsistency
    FROM judge_pairs WHERE first IS NOT NULL AND second IS NOT NULL GROUP BY ALL
), g AS (
    SELECT judge, count(*) AS grades,
           corr(grade, ln(greatest(candidate_chars, 1) / greatest(reference_chars, 1)))
             AS grade_length_corr
    FROM judge_calls WHERE mode = 'grade' AND grade IS NOT NULL GROUP BY ALL
)
SELECT judge, p.decisive_verdicts, p.position_bias, i.pairs, i.inconsistency,
       p.length_verdicts, p.length_bias, g.grades, g.grade_length_corr
FROM (SELECT DISTINCT judge FROM judge_calls) j
LEFT JOIN p USING (judge) LEFT JOIN i USING (judge) LEFT JOIN g USING (judge);

-- name: schema_95_router_scores_version
-- Which version of a router gave the score: a learned router's `vN` (trained before the sample
-- arrived), or how an out-of-fold score was made (`oof-forward/5`, `oof-kfold/5`); NULL for
-- routers without versions.
ALTER TABLE router_scores ADD COLUMN IF NOT EXISTS version VARCHAR;

-- name: schema_96_cascade_scores
-- How much each cascade (`[[cascades]]`) trusts a cheap answer, from the request and that
-- answer only: the probability it is good enough to keep rather than escalate to the frontier.
CREATE TABLE IF NOT EXISTS cascade_scores (
    sample_id VARCHAR NOT NULL,
    cascade   VARCHAR NOT NULL,
    model     VARCHAR NOT NULL,
    accept    DOUBLE NOT NULL,
    PRIMARY KEY (sample_id, cascade)
);

-- name: schema_97_cascade_latency
-- Each cascade's mean latency per request at each threshold of the savings grid, weighted
-- like the estimates (N_h / n_h): the cheap call's when its answer is kept, the cheap call's
-- plus production's frontier call's when escalated (the calls run one after the other).
CREATE OR REPLACE VIEW cascade_latency AS
WITH pop AS (SELECT stratum, big_n FROM population()),
o AS (
    SELECT s.stratum, x.model, cs.cascade, cs.accept, x.latency_ms AS lm, r.latency_ms AS lf,
           count(*) OVER (PARTITION BY s.stratum, x.model, cs.cascade) AS n_h
    FROM samples s
    JOIN requests r ON r.request_id = s.sample_id
    JOIN shadow_calls x ON x.sample_id = s.sample_id AND x.error IS NULL
    JOIN cascade_scores cs ON cs.sample_id = s.sample_id AND cs.model = x.model
    WHERE s.status = 'done'
)
SELECT o.cascade, t.threshold, o.model,
       sum(p.big_n / o.n_h * CASE WHEN 1.0 - o.accept < t.threshold THEN o.lm
                                  ELSE o.lm + o.lf END) / sum(p.big_n / o.n_h) AS latency_ms,
       sum(p.big_n / o.n_h * o.lf) / sum(p.big_n / o.n_h) AS frontier_latency_ms,
       count(*) FILTER (WHERE o.lf IS NULL) AS samples_without_latency
FROM o JOIN pop p USING (stratum),
     (SELECT unnest([0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6,
                     0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0]) AS threshold) t
GROUP BY ALL;

-- name: schema_98_router_costs
-- What each configured router costs per call (`cost_per_call_usd`), as the service was last
-- started with: the savings estimates add it to every request the router scores.
CREATE TABLE IF NOT EXISTS router_costs (
    router       VARCHAR PRIMARY KEY,
    kind         VARCHAR,
    usd_per_call DOUBLE NOT NULL,
    updated_at   TIMESTAMP DEFAULT current_timestamp
);

-- name: schema_99_router_overhead
-- Each router's own overhead: its calls, failures and latency (`router_calls`), and its cost
-- per call (`router_costs`), which the savings estimates include.
CREATE OR REPLACE VIEW router_overhead AS
SELECT c.router, count(*) AS calls, count(c.error) AS failed,
       median(c.latency_ms) AS p50_latency_ms, quantile_cont(c.latency_ms, 0.95) AS p95_latency_ms,
       max(c.latency_ms) AS max_latency_ms, coalesce(any_value(rc.usd_per_call), 0.0) AS usd_per_call
FROM router_calls c LEFT JOIN router_costs rc USING (router)
GROUP BY c.router;

-- name: schema_A0_tier_policies
-- The multi-tier policies (`[[policies]]`) as the service was last started with, one row per
-- tier of each setting: setting 0 as configured, 1.. the sweep of `policy_frontier`. A tier
-- takes a request when its router's score < threshold, or, with on_success, when
-- 1 - score >= threshold (a bar on the predicted success).
CREATE TABLE IF NOT EXISTS tier_policies (
    policy     VARCHAR NOT NULL,
    kind       VARCHAR NOT NULL,
    setting    INTEGER NOT NULL,
    label      VARCHAR NOT NULL,
    tier       INTEGER NOT NULL,                -- 1: the cheapest
    model      VARCHAR NOT NULL,
    router     VARCHAR NOT NULL,
    threshold  DOUBLE NOT NULL,
    on_success BOOLEAN NOT NULL,
    PRIMARY KEY (policy, setting, tier)
);

-- name: schema_A1_tier_shares
-- Each multi-tier policy as configured, per tier (the cheap models cheapest first, then
-- `frontier`): the share of traffic it takes, with a 95% Wilson interval (Kish's effective n,
-- Jeffreys' half observations per stratum, as `savings`), the quality of the requests it takes
-- and its share of the routed spend; stratified like every estimate (N_h / n_h per sample).
CREATE OR REPLACE VIEW tier_shares AS
WITH c AS (
    -- the frontier is the tier after the last cheap one
    SELECT c.*, coalesce(c.tier, f.k + 1) AS t
    FROM tier_choices(false) c
    JOIN (SELECT policy, max(tier) AS k FROM tier_policies WHERE setting = 0 GROUP BY policy) f
        USING (policy)
), strata AS (
    SELECT stratum, big_n FROM population()
), nh AS (
    SELECT policy, stratum, count(*) AS n, sum(c) AS sc FROM c GROUP BY ALL
), tiers AS (
    SELECT DISTINCT policy, tier, model FROM tier_policies WHERE setting = 0
    UNION ALL
    SELECT policy, max(tier) + 1, 'frontier' FROM tier_policies WHERE setting = 0 GROUP BY policy
), x AS (
    -- every (policy, tier, stratum), with the samples the tier took there
    SELECT t.policy, t.tier, t.model, nh.stratum, st.big_n, nh.n, nh.sc,
           count(c.sample_id) AS k, coalesce(sum(1.0 - c.l), 0.0) AS sq,
           coalesce(sum(c.c), 0.0) AS tc
    FROM tiers t JOIN nh ON nh.policy = t.policy JOIN strata st ON st.stratum = nh.stratum
    LEFT JOIN c ON c.policy = t.policy AND c.stratum = nh.stratum AND c.t = t.tier
    GROUP BY ALL
), a AS (
    SELECT policy, tier, model, sum(k)::BIGINT AS samples,
           sum(big_n * k / n) / sum(big_n) AS share,
           sum(big_n * sq / n) / nullif(sum(big_n * k / n), 0) AS quality,
           sum(big_n * tc / n) / nullif(sum(big_n * sc / n), 0) AS spend_share,
           -- z^2 / Kish's effective n, Jeffreys-regularised per stratum (as in `savings`)
           3.841458820694124 * sum(big_n * big_n * greatest(0.0, 1.0 - n / big_n)
               * ((k + 0.5) / (n + 1)) * (1 - (k + 0.5) / (n + 1)) / n) / pow(sum(big_n), 2)
             / ((sum(big_n * (k + 0.5) / (n + 1)) / sum(big_n))
                * (1 - sum(big_n * (k + 0.5) / (n + 1)) / sum(big_n))) AS kw
    FROM x GROUP BY ALL
)
SELECT policy, tier, model, samples, share,
       greatest(0.0, (share + kw / 2) / (1 + kw)
                     - sqrt(kw * share * (1 - share) + kw * kw / 4) / (1 + kw)) AS share_lower,
       least(1.0, (share + kw / 2) / (1 + kw)
                  + sqrt(kw * share * (1 - share) + kw * kw / 4) / (1 + kw)) AS share_upper,
       quality, spend_share
FROM a ORDER BY policy, tier;

-- name: schema_A2_policy_frontier
-- The cost-quality frontier across every policy one could deploy: each router at every
-- threshold of the savings grid, with each cheap model (`router`), a single cheap model for
-- everything (`single_model`, all_cheap), the cascades, and every setting of each multi-tier
-- policy's sweep (`multi_tier`, `label` its thresholds or bar; setting 0 as configured); the
-- oracle is shown as the `reference`. `on_frontier`: no other deployable point has at least its
-- quality and its savings, one of them higher (on the point estimates; the intervals are beside).
CREATE OR REPLACE VIEW policy_frontier AS
WITH g AS (
    SELECT * FROM grouped_savings_at([0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45,
                                      0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95,
                                      1.0], false, tier_sweep := true)
), lab AS (
    SELECT DISTINCT policy, setting, label FROM tier_policies
), p AS (
    SELECT CASE WHEN l.policy IS NOT NULL THEN 'multi_tier'
                WHEN g.router = 'oracle' THEN 'reference'
                WHEN g.router = 'all_cheap' THEN 'single_model'
                WHEN g.router IN (SELECT cascade FROM cascade_scores) THEN 'cascade'
                ELSE 'router' END AS kind,
           coalesce(l.policy, g.router) AS policy, g.model,
           CASE WHEN g.router NOT IN ('all_cheap', 'oracle') THEN g.threshold END AS threshold,
           l.setting,
           coalesce(l.label, CASE WHEN g.router NOT IN ('all_cheap', 'oracle')
                                  THEN 't=' || g.threshold END) AS label,
           g.samples, g.quality, g.quality_lower, g.quality_upper, g.savings, g.savings_lower,
           g.savings_upper, g.strong_share, g.frontier_usd, g.routed_usd, g.projected_usd_saved
    FROM g LEFT JOIN lab l ON g.router = l.policy || '#' || l.setting
    WHERE g.router NOT IN ('all_cheap', 'oracle') OR g.threshold = 0.5
)
SELECT *,
       CASE WHEN kind <> 'reference' THEN
            coalesce(max(quality) FILTER (WHERE kind <> 'reference') OVER (
                ORDER BY savings DESC, quality DESC
                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) < quality, true) END
         AS on_frontier
FROM p;

-- name: schema_A4_request_rollups
-- What retention (`[retention] requests_days`) keeps of the requests it purges: counts and sums
-- per (hour of production time, stratum, model, eligibility), so that every estimate over a
-- past window stays what it was (`population`). Sampled requests are never purged (the samples
-- need their time and cost). Several rows may share a key (a late record rolled up later): read
-- it with sums.
CREATE TABLE IF NOT EXISTS request_rollups (
    hour              TIMESTAMP NOT NULL,
    stratum           VARCHAR,
    model             VARCHAR,
    eligible          BOOLEAN,
    ineligible_reason VARCHAR,
    requests          BIGINT NOT NULL,
    priced            BIGINT NOT NULL,               -- requests with a known cost
    cost_usd          DOUBLE,
    input_tokens      BIGINT,
    output_tokens     BIGINT,
    latency_ms_sum    DOUBLE,
    latency_n         BIGINT,
    rolled_at         TIMESTAMP DEFAULT current_timestamp
);
