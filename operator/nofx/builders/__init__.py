"""What the operator creates, built as plain manifests (the Job of a step attempt, the Run of a
childRun step, their labels and owner references), and what it reads back from them (a Job and
its Pod as an observation for the planner). Pure functions, no server."""
