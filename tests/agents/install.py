"""Install the test agents as a real distribution (a dist-info with entry points) in a folder that
the tests put on sys.path and PYTHONPATH, so the kernel and its agent processes both find them."""

from __future__ import annotations

from pathlib import Path

KINDS = ["scale", "infer", "crash", "leak", "spin", "stubborn", "flood", "actuate"]


def install(where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    source = (Path(__file__).parent / "kinds.py").read_text()
    (where / "ek_test_agents.py").write_text(source)
    info = where / "ek_test_agents-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ek-test-agents\nVersion: 1.0\n")
    lines = [f"{kind} = ek_test_agents:{kind.capitalize()}" for kind in KINDS]
    (info / "entry_points.txt").write_text("[edgekernel.agents]\n" + "\n".join(lines) + "\n")
    return where
