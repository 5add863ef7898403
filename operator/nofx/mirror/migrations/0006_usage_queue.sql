-- Kueue: the LocalQueue of a step attempt's Job and the seconds it waited for admission, beside
-- its run time (wall_seconds, which alone is billed). NULL: the Job was not queued. Apply to the
-- global database first, then the regions, and refresh the global subscriptions.
ALTER TABLE usage_records ADD COLUMN queue text, ADD COLUMN queued_seconds double precision;
