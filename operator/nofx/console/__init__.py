"""`nofx console`: a read-only web console for Runs (list, DAG, timeline), the audit trail and
usage. Server-rendered HTML that reads without JavaScript.

Pure view logic (paging.py, dag.py, timeline.py, diff.py, usage.py) is kept apart from I/O
(cluster.py reads Kubernetes, the mirror's Store reads Postgres) and from the web layer (app.py).
"""
