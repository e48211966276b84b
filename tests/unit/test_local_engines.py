"""The two local engines are optional: Cantata imports without them, and a model whose engine is
missing fails to start with a typed error naming the extra that installs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cantata.agents import BackendError, LlamaCppConfig, ModelActor, ModelSpec, XLlamaCppConfig


def test_importing_cantata_loads_neither_engine():
    code = (
        "import sys\n"
        "import cantata.agents, cantata.agents.backends, cantata.topologies\n"
        "print(sorted(m for m in ('llama_cpp', 'xllamacpp') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "config", "extra"),
    [
        ("llama_cpp", LlamaCppConfig(), "cantata[llamacpp]"),
        ("xllamacpp", XLlamaCppConfig(), "cantata[local]"),
    ],
)
async def test_a_missing_engine_fails_at_start_naming_its_extra(monkeypatch, module, config, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    actor = ModelActor(ModelSpec(name="m", backend=config))
    with pytest.raises(BackendError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        await actor.start()
    await actor.close()
