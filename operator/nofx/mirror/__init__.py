"""The Postgres mirror: audit trail with hash chains, usage for billing, spec history."""
