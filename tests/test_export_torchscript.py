"""TorchScript export: a real loop (dynamic T and batch), loads in a fresh process without dsr_deploy,
bit-exact end to end with the PyTorch model."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from export_nets import (
    NEURON_SHAPE,
    OURS_CONV_SHAPE,
    SJ_CONV_SHAPE,
    exported,
    ours_conv_net,
    sj_conv_net,
    sj_neuron_net,
    spiky_input,
)

# (T, B) variants run through one artifact: batches 1, 3 and 8, and another T.
VARIANTS = [(4, 1), (4, 3), (4, 8), (7, 3)]

_FRESH = textwrap.dedent("""
    import sys, json
    import numpy as np

    class Block:  # the artifact must load and run with neither package importable
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in ('dsr_deploy', 'spikingjelly'):
                raise ImportError('blocked: ' + name)
            return None

    sys.meta_path.insert(0, Block())
    import torch
    m = torch.jit.load(sys.argv[1])
    for i, src in enumerate(sys.argv[2:]):
        y = m(torch.from_numpy(np.load(src)))
        np.save(src + '.out.npy', y.numpy())
    print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in ('dsr_deploy', 'spikingjelly'))))
""")


@pytest.mark.parametrize("factory,model_fn,shape,method", [
    ("sj_conv_net", sj_conv_net, SJ_CONV_SHAPE, "trace"),
    ("ours_conv_net", ours_conv_net, OURS_CONV_SHAPE, "script"),
    ("sj_neuron_net", sj_neuron_net, NEURON_SHAPE, "script"),
])
def test_torchscript_fresh_process_bit_exact(tmp_path, factory, model_fn, shape, method):
    folder = exported(factory, shape)
    manifest = json.loads((folder / "manifest.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["format"] == "torchscript")
    assert art["method"] == method
    model = model_fn()
    inputs, refs = [], []
    for k, (T, B) in enumerate(VARIANTS):
        x = spiky_input((T, B) + tuple(shape[2:]), seed=k)
        p = tmp_path / f"x{k}.npy"
        np.save(p, x)
        inputs.append(str(p))
        with torch.no_grad():
            refs.append(model(torch.from_numpy(x)).numpy())
    proc = subprocess.run([sys.executable, "-c", _FRESH, str(folder / "model.ts"), *inputs],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []  # neither package was imported
    for p, ref in zip(inputs, refs):
        got = np.load(p + ".out.npy")
        assert got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)
    assert any(np.count_nonzero(r) for r in refs)


def test_torchscript_loop_is_real():
    # A scripted recurrence keeps its loop in the graph; an unrolled trace would not.
    folder = exported("ours_conv_net", OURS_CONV_SHAPE)
    m = torch.jit.load(str(folder / "model.ts"))
    code = m.sn2.code if hasattr(m.sn2, "code") else ""
    graphs = str(m.sn2.graph) + str(getattr(m.sn2, "inlined_graph", ""))
    assert "prim::Loop" in graphs or "for " in code
