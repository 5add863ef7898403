"""The nofx.dev/v1alpha1 API types: the one source of truth the CRDs in crds/ are generated from."""

from nofx.api.agent import Agent, AgentSpec, AgentStatus
from nofx.api.common import API_VERSION, GROUP, VERSION, Condition, parse_duration
from nofx.api.run import Approval, Run, RunSpec, RunStatus, StepStatus
from nofx.api.schedule import Schedule, ScheduleSpec, ScheduleStatus
from nofx.api.template import Parameter, Step, Template, TemplateSpec, TemplateStatus

RESOURCES = (Agent, Template, Run, Schedule)

__all__ = [
    "API_VERSION",
    "GROUP",
    "RESOURCES",
    "VERSION",
    "Agent",
    "AgentSpec",
    "AgentStatus",
    "Approval",
    "Condition",
    "Parameter",
    "Run",
    "RunSpec",
    "RunStatus",
    "Schedule",
    "ScheduleSpec",
    "ScheduleStatus",
    "Step",
    "StepStatus",
    "Template",
    "TemplateSpec",
    "TemplateStatus",
    "parse_duration",
]
