"""The operator's context: made once at startup and kept on Kopf's memo, which Kopf hands to
every handler. No module holds a singleton: a test or a second operator in one process makes
its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import kopf

from nofx.kube import Kube
from nofx.mirror.writer import MirrorWriter
from nofx.peering import Peering
from nofx.reconcilers.watched import Watched

if TYPE_CHECKING:  # their modules register handlers that import this one
    from nofx.reconcilers.run_reconciler import RunReconciler
    from nofx.reconcilers.schedules import ScheduleReconciler

MEMO_KEY = "nofx"


@dataclass
class OperatorContext:
    kube: Kube
    runs: RunReconciler
    mirror: MirrorWriter | None  # None: no Postgres mirror configured
    watched: Watched  # what the operator's own watches hold
    schedules: ScheduleReconciler
    peering: Peering | None  # None: standalone, always active

    def keep_on(self, memo: kopf.Memo) -> None:
        memo[MEMO_KEY] = self


def of(memo: kopf.Memo) -> OperatorContext:
    return cast(OperatorContext, memo[MEMO_KEY])
