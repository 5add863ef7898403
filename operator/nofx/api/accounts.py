"""Accounts belong to namespaces: a platform admin labels a namespace with its account, and every
Run in it is billed there. The nofx-accounts ValidatingAdmissionPolicy (policies/accounts.yaml)
refuses a Run whose spec.account names another; the operator pins the namespace's account in
status.account when it first sees a Run, so relabelling a namespace never rewrites history."""

from __future__ import annotations

from collections.abc import Mapping

# On a namespace: the account its Runs are billed to (tenants cannot label namespaces). On the
# operator's Jobs and child Runs: the account they are billed to.
ACCOUNT_LABEL = "nofx.dev/account"


def namespace_account(namespace: str, labels: Mapping[str, str]) -> str:
    """A namespace without the label is an account of its own, named like it."""
    return labels.get(ACCOUNT_LABEL) or namespace
