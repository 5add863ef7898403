"""Reasons the operator writes into a Run's conditions and its steps' status: typed values that
tools and people can match on (the messages beside them are for people)."""

from enum import StrEnum


class Reason(StrEnum):
    # The Run could not start, or stopped, because of its own spec or status.
    INVALID_PLAN = "InvalidPlan"  # the plan cannot run (cycle, too large, bad reference)
    # The Run waits (Pending) for something to exist or to become valid.
    ACCOUNT_BUDGET_EXCEEDED = "AccountBudgetExceeded"  # its account spent its monthly budget
    TEMPLATE_MISSING = "TemplateMissing"
    TEMPLATE_INVALID = "TemplateInvalid"
    AGENT_MISSING = "AgentMissing"
    ACCOUNT_MISMATCH = "AccountMismatch"  # spec.account is not its namespace's account
    QUEUEING_DISABLED = "QueueingDisabled"  # a Kueue queue is named; the operator runs without
    INVALID_SPEC = "InvalidSpec"  # the spec does not validate (should have been refused)
    INCONSISTENT_STATUS = "InconsistentStatus"  # status edited by someone else than the operator
    STATUS_TOO_LARGE = "StatusTooLarge"  # the API server refused the status as too large
    STATUS_REJECTED = "StatusRejected"  # ... or as invalid
    RECONCILE_ERROR = "ReconcileError"  # the operator failed on this Run again and again
    # One step attempt failed in a way its retries cannot fix.
    JOB_REJECTED = "JobRejected"  # the API server refused the step's Job
    CHILD_RUN_REJECTED = "ChildRunRejected"  # ... or its child Run
    POD_CREATE_FAILED = "PodCreateFailed"  # the Job could not create its Pod in time
    OUTPUTS_LOST = "OutputsLost"  # the Job succeeded, but its Pod is gone with the outputs
    CHILD_RUN_LIMIT = "ChildRunLimit"  # depth or size limit of a tree of child Runs
    INVALID_USAGE = "InvalidUsage"  # the attempt's nofx.usage output is not valid usage
    UNPRICED_MODEL = "UnpricedModel"  # ... names a model its Agent's pricing does not price
    # The Run stopped because its recorded cost passed its budget.maxCost.
    BUDGET_EXCEEDED = "BudgetExceeded"
    # Why a step waits.
    AWAITING_APPROVAL = "AwaitingApproval"  # its approval gate: spec.approvals must name it
    SUSPENDED = "Suspended"  # spec.suspend: nothing new starts
    WAITING_FOR_SLOT = "WaitingForSlot"  # its Agent runs maxConcurrentSteps already
    RETRY_BACKOFF = "RetryBackoff"  # an attempt failed; the next starts at nextAttemptAt
    CACHE_LOOKUP = "CacheLookup"  # its cache key is being looked up in Postgres
    # Why a step succeeded without a Job: it reused an earlier attempt's outputs (step cache).
    CACHED = "Cached"
    # The Run asks for cached steps, but the operator has no Postgres mirror to keep them in.
    CACHE_UNAVAILABLE = "CacheUnavailable"
    # Why a step is Queued (its Job exists, suspended until Kueue admits it).
    QUEUED = "Queued"  # waits for quota in its queue (Kueue's message says which)
    QUEUE_INADMISSIBLE = "QueueInadmissible"  # its LocalQueue or ClusterQueue is missing/inactive
    EVICTED = "Evicted"  # Kueue took the admission back (preemption ...); waits to be readmitted
    # Why a step was skipped.
    UPSTREAM_FAILED = "UpstreamFailed"  # a step it depends on did not succeed
    WHEN_NOT_MET = "WhenNotMet"  # its `when` expressions are false


# Failures that another attempt of the same step would only repeat.
TERMINAL_STEP_REASONS = frozenset(
    {Reason.JOB_REJECTED, Reason.CHILD_RUN_REJECTED, Reason.UNPRICED_MODEL}
)
