"""Training configurations, with every training default defined here once (the CLI's options left
out take these). No torch in here: `ragserve --help` shows the defaults without loading it."""

from dataclasses import dataclass

from ragserve.errors import InvalidInputError

# Adapter methods (reader/adapter_train.py METHODS) and their default peak learning rate (AdamW).
METHOD_LR = {"lora": 3e-4, "ia3": 3e-3, "prompt": 3e-2}  # T-Few trains (IA)³ at 3e-3


@dataclass(frozen=True, slots=True)
class AdapterTrainConfig:
    max_passage_tokens: int  # as the readers cut passages (setting `max_passage_tokens`)
    method: str = "lora"
    epochs: float = 1.0
    batch: int = 4
    lr: float | None = None  # None: the method's default (METHODS)
    rank: int = 8  # LoRA
    alpha: int = 16  # LoRA
    virtual_tokens: int = 20  # prompt tuning
    holdout: float = 0.05  # fraction of examples (by id) only scored, never trained on
    eval_every: int = 100  # steps between held-out losses
    checkpoint_every: int = 50  # steps between checkpoints
    warmup: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        limits = {
            "method": self.method in METHOD_LR,
            "epochs": 0 < self.epochs <= 100,
            "batch": 1 <= self.batch <= 256,
            "lr": self.lr is None or 0 < self.lr <= 1,
            "rank": 1 <= self.rank <= 512,
            "alpha": 0 < self.alpha <= 4096,
            "virtual_tokens": 1 <= self.virtual_tokens <= 512,
            "holdout": 0 <= self.holdout < 1,
            "eval_every": self.eval_every >= 1,
            "checkpoint_every": self.checkpoint_every >= 1,
            "max_passage_tokens": 16 <= self.max_passage_tokens <= 4096,
        }
        bad = [name for name, ok in limits.items() if not ok]
        if bad:
            raise InvalidInputError(
                "invalid training setting: "
                + ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
                + f" (method one of {', '.join(METHOD_LR)}; 0 < epochs <= 100, batch 1..256, 0 < lr <= 1, "
                "rank 1..512, virtual_tokens 1..512, 0 <= holdout < 1)"
            )

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else METHOD_LR[self.method]


@dataclass(frozen=True, slots=True)
class RetroTrainConfig:
    steps: int = 200
    batch: int = 2
    seq_tokens: int = 128  # T: a multiple of the chunk size
    lr: float = 1e-3
    warmup: int = 20
    holdout: float = 0.1  # fraction of documents never trained on (evaluation)
    seed: int = 0

    def __post_init__(self) -> None:
        limits = {
            "steps": 1 <= self.steps <= 1_000_000,
            "batch": 1 <= self.batch <= 256,
            "seq_tokens": 1 <= self.seq_tokens <= 8_192,
            "lr": 0 < self.lr <= 1,
            "holdout": 0 <= self.holdout < 1,
        }
        bad = [name for name, ok in limits.items() if not ok]
        if bad:
            raise InvalidInputError(
                "out of range: "
                + ", ".join(f"{name}={getattr(self, name)}" for name in bad)
                + " (steps 1..1e6, batch 1..256, seq_tokens 1..8192, 0 < lr <= 1, 0 <= holdout < 1)"
            )
