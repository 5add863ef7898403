-- The outcome of each finished step attempt. A usage record already exists once per attempt
-- (job, agent, timings, resources); with its outcome it is also the history of attempts,
-- which the step_attempts view presents as such. Apply to the global database first: a
-- subscriber must have every column its publishers send.
ALTER TABLE usage_records ADD COLUMN outcome text;

CREATE VIEW step_attempts AS
SELECT region, run_uid, namespace, run_name, step, item_index, attempt, job_name, agent,
       outcome, started_at, finished_at, wall_seconds
FROM usage_records;
