"""The settings of what an answer may be besides a reading of the passages: an edit's answer
(the edit memory, service/application/edits.py) or a refusal (abstention, retriever/support.py).
Part of `Settings` (service/settings.py), with the same RAGSERVE_ prefix."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints


class AnswerSettings(BaseModel):
    # --- the edit memory (README "Edits") ------------------------------------------------------
    max_edits: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        100_000, description="Live edits at most; POST /v1/edits beyond answers 409 (0: edits are refused)."
    )
    max_edit_chars: Annotated[int, Field(ge=1, le=100_000)] = Field(
        4_000, description="Characters of an edit's answer, statement and note each (its question: max_question_chars)."
    )
    max_edits_page: Annotated[int, Field(ge=1, le=10_000)] = Field(
        1_000, description="Edits one GET /v1/edits lists at most (its `limit`); `after` pages on."
    )
    edit_scope_threshold: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5, description="Calibrated p(a question is in an edit's scope) at or above which the edit answers it."
    )
    edit_candidates: Annotated[int, Field(ge=1, le=64)] = Field(
        8, description="Nearest edits (by question embedding) the scope classifier judges per question."
    )
    edit_answers: Literal["edit", "reader"] = Field(
        "edit",
        description="How a question in an edit's scope is answered: `edit`, the edit's answer as written; "
        "`reader`, the reader given the edit as its first passage.",
    )

    # --- abstention (README "Abstention") ----------------------------------------------------
    abstain: bool = Field(
        True, description="Refuse when the passages found do not support an answer (requests may say otherwise)."
    )
    abstain_threshold: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None,
        description="Abstain below this calibrated support; default: the value fitted for the retrieval mode "
        "(retriever/data/support.json).",
    )
    refusal_text: Annotated[str, StringConstraints(min_length=1, max_length=1_000)] = Field(
        "The documents do not say.", description="The answer of an abstained request."
    )
