"""Config files the tests write, as the user would."""

from __future__ import annotations

from pathlib import Path

CHEAP_IN, CHEAP_OUT = 0.15, 0.6


def write_config(path: Path, *, bootstrap: str, topic: str, group: str, db: Path,
                 model_url: str, default_rate: float = 0.2, math_rate: float = 0.3,
                 port: int = 0, extra: str = "", more_topics: tuple[str, ...] = ()) -> Path:
    topics = ", ".join(f'"{t}"' for t in (topic, *more_topics))
    path.write_text(f"""
[kafka]
bootstrap_servers = "{bootstrap}"
topics = [{topics}]
group_id = "{group}"
session_timeout_ms = 2000   # test setting: Tansu waits max(1 s, timeout/2) for joins
max_batch_records = 500
poll_timeout_ms = 200

[storage]
db_path = "{db}"

[sampling]
default_rate = {default_rate}
stratify_tag = "feature"
rates = {{ "gpt-4o|math" = {math_rate} }}

[prices]
"gpt-4o" = {{ input = 2.5, output = 10.0 }}

[[shadow.models]]
name = "cheap"
base_url = "{model_url}"
model = "tiny"
input_per_mtok = {CHEAP_IN}
output_per_mtok = {CHEAP_OUT}
timeout_s = 10

[[routers]]
name = "random"
kind = "random"

[[routers]]
name = "rules"
kind = "rules"
long_prompt_chars = 200
weak_keywords = ["extract"]

[scoring]
default = "exact_match"
by_tag = {{ math = "final_number" }}

[server]
port = {port}
{extra}
""")
    return path
