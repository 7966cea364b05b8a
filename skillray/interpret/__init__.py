"""Interpret stage: skill profiles (projections, poles), contrastive labels, label fidelity, report.

    m = run_interpret("runs/demo", InterpretConfig())            # offline labeller and judge
    m = run_interpret("runs/demo", InterpretConfig(base_url="http://127.0.0.1:8000/v1",
                                                    model="smollm2-135m-instruct"))
"""

from skillray.llm_client import ChatClient, EndpointError, ResponseCache
from skillray.interpret.factors import Factor, align, record_factors
from skillray.interpret.labels import Axis, Label, judge_messages, label_messages, parse_judgement, parse_label
from skillray.interpret.offline import ContrastiveKeywords, KeywordJudge
from skillray.interpret.profile import Poles, cut_to_tokens, pole_sizes, project, record_text, split_poles
from skillray.interpret.stage import fidelity, read_labels, read_projections, resolve_roles, run_interpret

__all__ = [
    "Axis",
    "ChatClient",
    "ContrastiveKeywords",
    "EndpointError",
    "Factor",
    "KeywordJudge",
    "Label",
    "align",
    "Poles",
    "ResponseCache",
    "cut_to_tokens",
    "fidelity",
    "judge_messages",
    "label_messages",
    "parse_judgement",
    "parse_label",
    "pole_sizes",
    "project",
    "record_factors",
    "read_labels",
    "read_projections",
    "record_text",
    "resolve_roles",
    "run_interpret",
    "split_poles",
]
