"""The release gate, its reports, promotion into the registry and the offline evaluation."""

from gate.checks import CheckResult
from gate.evaluation import EvalResult, EvalRow, evaluate, write_eval
from gate.measures import ModelMeasures, measure_model
from gate.policy import Policy, load_policy, policy_from_dict
from gate.runner import GateResult, run_gate

__all__ = [
    "CheckResult",
    "EvalResult",
    "EvalRow",
    "GateResult",
    "ModelMeasures",
    "Policy",
    "evaluate",
    "load_policy",
    "measure_model",
    "policy_from_dict",
    "run_gate",
    "write_eval",
]
