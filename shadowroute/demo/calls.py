"""The generated production calls the demo's traffic is made of, before any log format."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Task:
    task: str
    system: str
    prompt: str
    answer: str


@dataclass
class Call:
    """One generated production call, with everything a log record holds."""

    request_id: str
    ts: float
    model: str
    task: Task
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.task.system},
                {"role": "user", "content": self.task.prompt}]
