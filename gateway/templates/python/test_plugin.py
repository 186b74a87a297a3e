from pathlib import Path

from switchyard_plugin import Forward, Identity
from switchyard_plugin.testing import load

PLUGIN = Path(__file__).parent.parent / "{{module}}.py"


def test_shouts():
    p = load(PLUGIN)
    assert p.publish(Identity("ann"), "chat:1", {"text": "hi"}) == Forward(("chat:1", {"text": "HI"}))
