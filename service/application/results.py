"""Results of index administration, as the HTTP layer returns them (no heavy imports here)."""

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SwitchResult:
    index: str
    serving: str
    previous: str
    seconds: float
    pruned: list[str] = field(default_factory=list)
    built: bool = False  # a new version was compacted from the serving one and its delta
