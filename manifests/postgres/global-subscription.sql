-- Run on the GLOBAL database, after `nofx db migrate` created the same tables there:
--   psql "$GLOBAL_DSN" -v ON_ERROR_STOP=1 \
--       -v eu_conninfo='host=pg.eu.example port=5432 dbname=nofx user=nofx_replicator' \
--       -v us_conninfo='host=pg.us.example port=5432 dbname=nofx user=nofx_replicator' \
--       -f global-subscription.sql
-- One subscription per region, each to that region's nofx_mirror publication (see
-- publication.sql). Add a region by adding a line like these. CREATE SUBSCRIPTION cannot run
-- inside a transaction block, so run this file with psql as above (each statement on its own),
-- not with --single-transaction.
--
-- Each subscription first copies the region's existing rows, then streams its changes. Rows of
-- different regions never collide: every primary key starts with region.
CREATE SUBSCRIPTION nofx_eu CONNECTION :'eu_conninfo' PUBLICATION nofx_mirror;
CREATE SUBSCRIPTION nofx_us CONNECTION :'us_conninfo' PUBLICATION nofx_mirror;
